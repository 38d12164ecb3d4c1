"""One module per source format: each converts one kind of raw export into DICOM objects."""
