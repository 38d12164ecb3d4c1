"""What leaves a site, decided in one place: the release gate, the disclosure policy's rules, the
differencing ledger, the privacy budget, the run registry and the audit log.

* ``gate``: every reply a site sends passes ``ReleaseGate`` (``fl_client.gate`` registers the
  ClientApp's handlers through it).
* ``disclosure``: the policy's rules for one answer (minimum cell, secondary and differencing
  suppression, bin layouts, noise, DP) and the audit log.
* ``cell_ledger``: the patient sets behind released cells, per coordinator (keyed digests).
* ``ledger``: the DP budget per coordinator, cached DP answers, secure-sum participant sets.
* ``runs``: which spec the site answered in which run (training is admitted for that spec only).
* ``secret``: the site's release key and what is derived from it.
* ``consortium``: the count vector of secure totals and the release rule of the sum.
"""
