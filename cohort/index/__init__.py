"""The site-local index: DICOM objects as entities, SR content as items, SEG segments, and cohort
evaluation over them (DuckDB by default, OpenSearch for scale)."""
