"""The declarative cohort spec: typed model, YAML and text forms, validation against indexed fields."""
