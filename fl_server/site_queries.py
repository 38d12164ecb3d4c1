"""One query message to each agreed node, and what became of it per site (the rounds around training).

Every site starts as ``timeout``; a Flower error reply makes it ``error`` with Flower's reason; a
site's answer record sets its own status and reason. The answered records are returned for the round
to read its payload from, in the order the replies came.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from cohort.protocol import ANSWER_RECORD, KEY_REASON, KEY_SITE_ID, KEY_STATUS, STATUS_ANSWERED


def ask_sites(grid: Grid, node_sites: dict[int, str], content: RecordDict, action: str,
              timeout: float) -> tuple[dict[str, dict[str, Any]], dict[str, ConfigRecord]]:
    """Send ``content`` as ``query.<action>`` to every node; (site -> status and reason, site -> answer record)."""
    messages = [Message(content=content, dst_node_id=n, message_type=f"query.{action}") for n in sorted(node_sites)]
    sites: dict[str, dict[str, Any]] = {s: {"status": "timeout", "reason": f"no answer within {timeout:.0f} s"}
                                        for s in node_sites.values()}
    answered: dict[str, ConfigRecord] = {}
    for msg in grid.send_and_receive(messages, timeout=timeout):
        if msg.has_error():
            site = node_sites.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
            sites[site] = {"status": "error", "reason": msg.error.reason}
            continue
        rec = msg.content.config_records[ANSWER_RECORD]
        site, status = str(rec[KEY_SITE_ID]), str(rec[KEY_STATUS])
        sites[site] = {"status": status, "reason": str(rec[KEY_REASON]) if rec.get(KEY_REASON) else None}
        if status == STATUS_ANSWERED:
            answered[site] = rec
    return sites, answered
