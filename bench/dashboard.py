"""Dashboard update latency at scale: an index of N synthetic patients built from rows, then timed
``/api/query`` round trips (spec + counts from ``evaluate`` + every chart dataset) over HTTP, first by
one user, then by several users at once (loopback only, a bounded number of requests, every answer
computed afresh), reported against the single-user figure of the same run.

    python bench/dashboard.py --patients 100000 [--index-dir /tmp/dash-bench] [--repeat 5] \
        [--clients 8] [--requests-per-client 16]

The index is written straight into the index tables with DuckDB SQL (no DICOM files): per patient
a CT series, an ECG waveform, a TID 3700 ECG report, a registry record, a procedure history, a SEG
and TAVI landmarks, each present with a realistic probability and carrying the fields the templates
index (QRS duration, ECG findings, prosthesis type, pacemaker after TAVI, segment labels, ...), so
the queries touch as many rows as a real store of that size. It is cached between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from cohort.dashboard.api import Dashboard
from cohort.dashboard.server import make_server
from cohort.index.duck import INDEX_FILE, DuckIndex

SLOTS = 8  # entity ids per patient: patient p owns ids p*SLOTS+1 .. p*SLOTS+7

# (slot, kind, template, probability of having it, sop class, modality)
OBJECTS = [
    (1, "CT", None, 0.85, "1.2.840.10008.5.1.4.1.1.2", "CT"),
    (2, "ECG", None, 0.80, "1.2.840.10008.5.1.4.1.1.9.1.1", "ECG"),
    (3, "SR", "ecg_report", 0.80, "1.2.840.10008.5.1.4.1.1.88.33", "SR"),
    (4, "SR", "registry", 0.95, "1.2.840.10008.5.1.4.1.1.88.33", "SR"),
    (5, "SR", "procedures", 0.95, "1.2.840.10008.5.1.4.1.1.88.33", "SR"),
    (6, "SEG", None, 0.40, "1.2.840.10008.5.1.4.1.1.66.4", "SEG"),
    (7, "SR", "landmarks", 0.30, "1.2.840.10008.5.1.4.1.1.88.34", "SR"),
]


def _sql_setup(con: Any, patients: int) -> None:
    # u(p, k): a deterministic uniform number in [0, 1) per patient and stream k.
    con.execute("CREATE OR REPLACE TEMP MACRO u(p, k) AS (hash(p * 1000003 + k) % 1000000) / 1000000.0")
    con.execute(f"CREATE OR REPLACE TEMP TABLE pt AS SELECT range AS p, 'P' || lpad(CAST(range AS VARCHAR), 7, '0') "
                f"AS pid, DATE '2018-01-01' + CAST(u(range, 1) * 2000 AS INTEGER) AS tavi FROM range({patients})")


def build_index(store: Path, patients: int) -> Path:
    """Write (or reuse) ``store/index.duckdb`` with ``patients`` synthetic patients."""
    path = store / INDEX_FILE
    marker = store / "patients.txt"
    if path.exists() and marker.exists() and marker.read_text().strip() == str(patients):
        return path
    store.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with DuckIndex(path) as index:
        con = index.con
        _sql_setup(con, patients)
        for slot, kind, template, prob, sop_class, modality in OBJECTS:
            tpl = f"'{template}'" if template else "NULL"
            n_inst = "64" if kind == "CT" else "1"
            # The entity date: CT and ECG before TAVI, procedures on it.
            offset = {1: "-CAST(u(p, 11) * 120 AS INTEGER)", 2: "-CAST(u(p, 12) * 200 AS INTEGER)",
                      3: "-CAST(u(p, 12) * 200 AS INTEGER)", 6: "-CAST(u(p, 11) * 120 AS INTEGER)"}.get(slot, "0")
            con.execute(
                f"INSERT INTO entities (entity_id, kind, template, patient_id, study_uid, series_uid, sop_uid, sop_class_uid, modality, entity_date, entity_datetime, n_instances, path) SELECT p * {SLOTS} + {slot}, '{kind}', {tpl}, pid, '1.2.' || p, "
                f"'1.2.' || p || '.{slot}', CASE WHEN '{kind}' = 'CT' THEN NULL ELSE '1.2.' || p || '.{slot}.1' END, "
                f"'{sop_class}', '{modality}', tavi + {offset}, CAST(tavi + {offset} AS TIMESTAMP), {n_inst}, "
                f"'/bench/' || pid || '/{slot}' FROM pt WHERE u(p, {100 + slot}) < {prob}")
        has = "SELECT p, pid, tavi FROM pt WHERE u(p, {k}) < {prob}"
        ct, ecg, rep, reg, prc, seg, lmk = (has.format(k=100 + o[0], prob=o[3]) for o in OBJECTS)
        # CT series attributes
        con.execute(f"""INSERT INTO attributes (entity_id, name, num, text)
            SELECT p * {SLOTS} + 1, name, num, text FROM ({ct}) c, LATERAL (VALUES
              ('slice_thickness', [0.5, 0.6, 1.0, 3.0][1 + CAST(u(p, 20) * 4 AS INTEGER)], NULL),
              ('kvp', CASE WHEN u(p, 21) < 0.5 THEN 100.0 ELSE 120.0 END, NULL),
              ('rows', 64.0, NULL), ('columns', 64.0, NULL), ('pixel_spacing', 0.8, NULL),
              ('series_description', NULL, ['CTA TAVI Planung 0.6 Bv36', 'Herz TAVI 1.0 CE', 'Thorax nativ 3.0']
                                           [1 + CAST(u(p, 22) * 3 AS INTEGER)]),
              ('manufacturer', NULL, CASE WHEN u(p, 23) < 0.5 THEN 'SIEMENS' ELSE 'GE MEDICAL SYSTEMS' END),
              ('convolution_kernel', NULL, CASE WHEN u(p, 23) < 0.5 THEN 'Bv36' ELSE 'STANDARD' END),
              ('body_part', NULL, 'HEART')) v(name, num, text)""")
        # ECG waveform attributes (one 'lead' value per channel)
        con.execute(f"""INSERT INTO attributes (entity_id, name, num, text)
            SELECT p * {SLOTS} + 2, name, num, text FROM ({ecg}) c, LATERAL (VALUES
              ('sampling_frequency', CASE WHEN u(p, 24) < 0.7 THEN 500.0 ELSE 1000.0 END, NULL),
              ('lead_count', 12.0, NULL), ('duration_s', 10.0, NULL),
              ('manufacturer', NULL, CASE WHEN u(p, 25) < 0.5 THEN 'GE Healthcare' ELSE 'SCHILLER' END)) v(name, num, text)""")
        con.execute(f"""INSERT INTO attributes (entity_id, name, num, text) SELECT p * {SLOTS} + 2, 'lead', NULL, lead FROM ({ecg}) c,
            (SELECT unnest(['I','II','III','aVR','aVL','aVF','V1','V2','V3','V4','V5','V6']) AS lead)""")
        # ECG report items: measurements, findings (same-instance traps: LBBB and QRS on one report)
        qrs = "round(85 + u(p, 30) * 40 + CASE WHEN u(p, 31) < 0.15 THEN 40 ELSE 0 END)"
        con.execute(f"""INSERT INTO items (entity_id, field, item_path, group_key, num, unit, code_value, code_scheme, code_meaning, text, date)
            SELECT p * {SLOTS} + 3, field, path, grp, num, unit, NULL, NULL, NULL, NULL, NULL FROM ({rep}) c,
            LATERAL (VALUES ('qrs_duration', '5.1.2', '5.1', {qrs}, 'ms'),
              ('heart_rate', '5.1.1', '5.1', round(50 + u(p, 32) * 50), '/min'),
              ('pr_interval', '5.1.3', '5.1', round(140 + u(p, 33) * 100), 'ms'),
              ('qt_interval', '5.1.4', '5.1', round(340 + u(p, 34) * 100), 'ms'),
              ('qtc_interval', '5.1.5', '5.1', round(380 + u(p, 35) * 80), 'ms'),
              ('age', '1.1', '1', round(65 + u(p, 36) * 25), 'a')) v(field, path, grp, num, unit)""")
        con.execute(f"""INSERT INTO items (entity_id, field, item_path, group_key, num, unit, code_value, code_scheme, code_meaning, text, date)
            SELECT p * {SLOTS} + 3, 'ecg_finding', '6.1', '6', NULL, NULL, code, 'SCT', meaning, NULL, NULL
            FROM ({rep}) c, LATERAL (SELECT * FROM (VALUES
              ('64730000', 'Normal sinus rhythm', u(p, 40) < 0.7),
              ('63467002', 'Left bundle branch block', u(p, 31) < 0.15 AND u(p, 41) < 0.6),
              ('59118001', 'Right bundle branch block', u(p, 42) < 0.08),
              ('270492004', 'First degree atrioventricular block', u(p, 43) < 0.12),
              ('49436004', 'Atrial fibrillation', u(p, 40) >= 0.7)) f(code, meaning, present) WHERE present)""")
        con.execute(f"""INSERT INTO items (entity_id, field, item_path, group_key, num, unit, code_value, code_scheme, code_meaning, text, date) SELECT p * {SLOTS} + 3, 'ecg_datetime', '2.1', '2', NULL, NULL, NULL,
            NULL, NULL, NULL, tavi - CAST(u(p, 12) * 200 AS INTEGER) FROM ({rep}) c""")
        # Registry items
        yes = "'373066001', 'SCT', 'Yes'"
        con.execute(f"""INSERT INTO items (entity_id, field, item_path, group_key, num, unit, code_value, code_scheme, code_meaning, text, date)
            SELECT p * {SLOTS} + 4, field, path, grp, num, unit, code, scheme, meaning, NULL, date FROM ({reg}) c,
            LATERAL (VALUES
              ('age', '2.1', '2', round(65 + u(p, 36) * 25), 'a', NULL, NULL, NULL, NULL::DATE),
              ('lvef', '3', '0', round(30 + u(p, 50) * 40), '%', NULL, NULL, NULL, NULL),
              ('height', '2.3', '2', round(155 + u(p, 51) * 35), 'cm', NULL, NULL, NULL, NULL),
              ('weight', '2.4', '2', round(55 + u(p, 52) * 45), 'kg', NULL, NULL, NULL, NULL),
              ('prosthesis_size', '4.3', '4', [23.0, 26.0, 29.0][1 + CAST(u(p, 53) * 3 AS INTEGER)], 'mm',
               NULL, NULL, NULL, NULL),
              ('prosthesis_type', '4.2', '4', NULL, NULL, CASE WHEN u(p, 54) < 0.6 THEN 'PT001' ELSE 'PT002' END,
               '99FEDCOH', CASE WHEN u(p, 54) < 0.6 THEN 'Balloon-expandable transcatheter valve'
                           ELSE 'Self-expanding transcatheter valve' END, NULL),
              ('sex', '2.2', '2', NULL, NULL, CASE WHEN u(p, 55) < 0.45 THEN 'M' ELSE 'F' END, 'DCM',
               CASE WHEN u(p, 55) < 0.45 THEN 'Male' ELSE 'Female' END, NULL),
              ('nyha_class', '1.2', '1', NULL, NULL,
               ['421704003', '420913000', '422293003'][1 + CAST(u(p, 56) * 3 AS INTEGER)], 'SCT',
               ['NYHA class II', 'NYHA class III', 'NYHA class IV'][1 + CAST(u(p, 56) * 3 AS INTEGER)], NULL),
              ('diabetes', '1.1', '1', CASE WHEN u(p, 57) < 0.3 THEN 1.0 ELSE 0.0 END, NULL,
               CASE WHEN u(p, 57) < 0.3 THEN '373066001' ELSE '373067005' END, 'SCT',
               CASE WHEN u(p, 57) < 0.3 THEN 'Yes' ELSE 'No' END, NULL),
              ('access_route', '4.4', '4', NULL, NULL, CASE WHEN u(p, 58) < 0.9 THEN 'AR001' ELSE 'AR002' END,
               '99FEDCOH', CASE WHEN u(p, 58) < 0.9 THEN 'Transfemoral access' ELSE 'Transapical access' END, NULL),
              ('tavi_date', '4.1', '4', NULL, NULL, NULL, NULL, NULL, tavi)
            ) v(field, path, grp, num, unit, code, scheme, meaning, date)""")
        # Procedure history: TAVI date, pacemaker after TAVI (label, more likely with LBBB / self-expanding)
        risk = "0.06 + CASE WHEN u(p, 31) < 0.15 THEN 0.15 ELSE 0 END + CASE WHEN u(p, 54) >= 0.6 THEN 0.08 ELSE 0 END"
        con.execute(f"""INSERT INTO items (entity_id, field, item_path, group_key, num, unit, code_value, code_scheme, code_meaning, text, date)
            SELECT p * {SLOTS} + 5, field, path, grp, num, NULL, code, scheme, meaning, NULL, date FROM ({prc}) c,
            LATERAL (VALUES
              ('tavi_date', '2.1', '2', NULL, NULL, NULL, NULL, tavi),
              ('pacemaker_after_tavi', '2.2', '2', CASE WHEN u(p, 60) < {risk} THEN 1.0 ELSE 0.0 END,
               CASE WHEN u(p, 60) < {risk} THEN '373066001' ELSE '373067005' END, 'SCT',
               CASE WHEN u(p, 60) < {risk} THEN 'Yes' ELSE 'No' END, NULL),
              ('procedure_code', '1.1', '1.1', NULL, '5-35a.00', '99OPS', 'Implantation eines Aortenklappenersatzes', NULL),
              ('procedure_date', '1.1.1', '1.1', NULL, NULL, NULL, NULL, tavi),
              ('procedure_code', '1.2', '1.2', NULL, '8-930', '99OPS', 'Monitoring von Atmung, Herz und Kreislauf', NULL),
              ('procedure_date', '1.2.1', '1.2', NULL, NULL, NULL, NULL, tavi)
            ) v(field, path, grp, num, code, scheme, meaning, date)""")
        con.execute(f"""INSERT INTO items (entity_id, field, item_path, group_key, num, unit, code_value, code_scheme, code_meaning, text, date) SELECT p * {SLOTS} + 5, 'pacemaker_in_situ', '1.3', '1', 1.0, NULL,
            {yes}, NULL, NULL FROM ({prc}) c WHERE u(p, 61) < 0.03""")
        # SEG segments: LV / RV (manual or automatic), membranous septum, calcification
        con.execute(f"""INSERT INTO segments (entity_id, segment_number, label, category_code, category_scheme, category_meaning, type_code, type_scheme, type_meaning, algorithm_type, algorithm_name, anatomic_region, anatomic_region_scheme, anatomic_region_meaning)
            SELECT p * {SLOTS} + 6, n, label, cat, cat_s, cat_m, typ, typ_s, typ_m,
                   CASE WHEN u(p, 70 + n) < 0.4 THEN 'MANUAL' WHEN u(p, 70 + n) < 0.7 THEN 'SEMIAUTOMATIC'
                        ELSE 'AUTOMATIC' END, '3D Slicer Segment Editor', NULL, NULL, NULL FROM ({seg}) c,
            LATERAL (VALUES
              (1, 'Left ventricle', '91723000', 'SCT', 'Anatomical Structure', '87878005', 'SCT', 'Left ventricle'),
              (2, 'Right ventricle', '91723000', 'SCT', 'Anatomical Structure', '53085002', 'SCT', 'Right ventricle'),
              (3, 'Membranous septum', '91723000', 'SCT', 'Anatomical Structure', 'MS001', '99FEDCOH',
               'Membranous interventricular septum'),
              (4, 'Calcification', '49755003', 'SCT', 'Morphologically Altered Structure', '237897009', 'SCT',
               'Calcified')) v(n, label, cat, cat_s, cat_m, typ, typ_s, typ_m)
            WHERE n <= 2 + CAST(u(p, 69) * 3 AS INTEGER)""")
        con.execute(f"""INSERT INTO attributes (entity_id, name, num, text) SELECT p * {SLOTS} + 6, 'segment_count',
            2 + CAST(u(p, 69) * 3 AS INTEGER), NULL FROM ({seg}) c""")
        # Landmarks: three (finding, site) groups and their points
        con.execute(f"""INSERT INTO items (entity_id, field, item_path, group_key, num, unit, code_value, code_scheme, code_meaning, text, date)
            SELECT p * {SLOTS} + 7, field, '5.' || g || suffix, '5.' || g, num, NULL, code, scheme, meaning, txt, NULL
            FROM ({lmk}) c, (SELECT unnest([1, 2, 3]) AS g) gs, LATERAL (VALUES
              ('landmark_finding', '.3', NULL, 'HP001', '99FEDCOH', 'Aortic valve hinge point', NULL),
              ('landmark_site', '.3.1', NULL, ['24865005', '36371001', '89093001'][g], 'SCT',
               ['Non-coronary Sinus', 'Left Sinus of Valsalva', 'Right Sinus of Valsalva'][g], NULL),
              ('landmark_point', '.4', 1.0, NULL, NULL, NULL, 'POINT')
            ) v(field, suffix, num, code, scheme, meaning, txt)""")
        index.optimize(force=True)  # fills pid / kind / template and patients, sorts, checkpoints
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("entities", "attributes", "items", "segments")}
    marker.write_text(str(patients))
    print(f"built {path} in {time.perf_counter() - t0:.1f} s: {counts}")
    return path


# The filter changes a steward makes, in order (each one is one update of the page).
ACTIONS: list[dict[str, Any]] = [
    {"type": "add", "kind": "SR", "template": "ecg_report",
     "filters": [{"field": "ecg_finding", "op": "=", "value": "LBBB"}]},
    {"type": "add", "kind": "SR", "template": "ecg_report",
     "filters": [{"field": "qrs_duration", "op": ">=", "value": 120, "unit": "ms"},
                 {"field": "qrs_duration", "op": "<", "value": 160, "unit": "ms"}]},
    {"type": "add", "kind": "CT", "filters": [{"field": "slice_thickness", "op": "<", "value": 1.5, "unit": "mm"}]},
    {"type": "add", "kind": "SR", "template": "registry",
     "filters": [{"field": "prosthesis_type", "op": "=", "value": "self-expanding"}]},
    {"type": "add", "kind": "SEG", "filters": [{"field": "segment_type", "op": "=", "value": "LV"}]},
    {"type": "negate", "group": "seg", "index": 0},
    {"type": "split", "group": "ecg_report", "index": 1},
    {"type": "remove_group", "group": "seg"},
]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def measure(store: Path, repeat: int) -> dict[str, Any]:
    """Time every action of ACTIONS ``repeat`` times through the HTTP API."""
    t0 = time.perf_counter()
    dashboard = Dashboard(store)
    startup = time.perf_counter() - t0
    server = make_server(dashboard, port=0, watch=False).start()
    url = server.url
    try:
        with urllib.request.urlopen(url + "api/initial", timeout=120) as resp:
            first = json.loads(resp.read())
        times: list[float] = []
        server_ms: list[float] = []
        counts_ms: list[float] = []
        charts_ms: list[float] = []
        cpu_ms: list[float] = []
        for _ in range(repeat):
            state = first["state"]
            for action in ACTIONS:
                dashboard.clear_cache()  # every update computed afresh, as a new filter would be
                t, cpu = time.perf_counter(), time.process_time()
                result = _post(url + "api/query", {"state": state, "action": action})
                times.append((time.perf_counter() - t) * 1000)
                cpu_ms.append((time.process_time() - cpu) * 1000)  # all threads of this process
                server_ms.append(result["elapsed_ms"])
                counts_ms.append(result["timings"]["counts_ms"])
                charts_ms.append(result["timings"]["charts_ms"])
                state = result["state"]
        cohort = result["counts"]["patients"]
    finally:
        server.shutdown()
        server.server_close()
        dashboard.close()
    q = statistics.quantiles(times, n=20, method="inclusive")
    return {"patients": dashboard.patients, "charts": len(dashboard.charts), "updates": len(times),
            "startup_s": round(startup, 2), "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(q[18], 1), "max_ms": round(max(times), 1),
            "server_p50_ms": round(statistics.median(server_ms), 1),
            "counts_p50_ms": round(statistics.median(counts_ms), 1),
            "charts_p50_ms": round(statistics.median(charts_ms), 1),
            "cpu_p50_ms": round(statistics.median(cpu_ms), 1), "last_cohort": cohort,
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}


def _client_actions(client: int, n: int) -> list[dict[str, Any]]:
    """``n`` updates for one simulated user: the steward's sequence, its ranges shifted per user so
    that users do not ask the very same spec (and answers are computed, not shared)."""
    out = []
    for k in range(n):
        action = json.loads(json.dumps(ACTIONS[k % len(ACTIONS)]))
        for f in action.get("filters", []):
            if f["field"] == "qrs_duration":
                f["value"] += client + 10 * (k // len(ACTIONS))
            elif f["field"] == "slice_thickness":
                f["value"] += 0.01 * client
        out.append(action)
    return out


def _run_users(url: str, start: dict[str, Any], clients: int, per_client: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``per_client`` updates one after the other; latency per request."""
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def user(client: int) -> None:
        state = start["state"]
        barrier.wait()
        for k, action in enumerate(_client_actions(client, per_client)):
            if k % len(ACTIONS) == 0:
                state = start["state"]  # each pass of the sequence starts from the page's first state
            t = time.perf_counter()
            try:
                result = _post(url + "api/query", {"state": state, "action": action})
                state = result["state"]
                with lock:
                    times.append((time.perf_counter() - t) * 1000)
            except Exception as err:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                state = start["state"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(times, n=20, method="inclusive") if len(times) > 1 else [times[0]] * 19
    return {"clients": clients, "requests": clients * per_client, "ok": len(times), "errors": len(errors),
            "first_errors": errors[:3], "p50_ms": round(statistics.median(times), 1), "p95_ms": round(q[18], 1),
            "max_ms": round(max(times), 1), "throughput_per_s": round(len(times) / wall, 2),
            "wall_s": round(wall, 2)}


def measure_concurrent(store: Path, clients: int, per_client: int) -> dict[str, Any]:
    """The same bounded load by one user and by ``clients`` users at once (no result cache)."""
    dashboard = Dashboard(store, caching=False)
    server = make_server(dashboard, port=0, watch=False).start()
    try:
        with urllib.request.urlopen(server.url + "api/initial", timeout=120) as resp:
            start = json.loads(resp.read())
        _run_users(server.url, start, 1, 2)  # warm-up: first connections, page cache
        single = _run_users(server.url, start, 1, per_client)
        many = _run_users(server.url, start, clients, per_client)
    finally:
        server.shutdown()
        server.server_close()
        dashboard.close()
    return {"single_user": single, "concurrent": many,
            "p50_ratio": round(many["p50_ms"] / single["p50_ms"], 2),
            "p95_ratio": round(many["p95_ms"] / single["p95_ms"], 2),
            "throughput_ratio": round(many["throughput_per_s"] / single["throughput_per_s"], 2),
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--index-dir", type=Path, default=Path("/tmp/fedcohort-dashboard-bench"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8, help="concurrent users (0: skip the concurrent run)")
    parser.add_argument("--requests-per-client", type=int, default=16)
    args = parser.parse_args()
    store = args.index_dir / f"store-{args.patients}"
    build_index(store, args.patients)
    print(json.dumps(measure(store, args.repeat), indent=1))
    if args.clients:
        print(json.dumps(measure_concurrent(store, args.clients, args.requests_per_client), indent=1))


if __name__ == "__main__":
    main()
