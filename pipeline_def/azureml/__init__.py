"""The Azure ML backend: REST verbs, the publisher, the SDK v1 pipeline definition, the backend itself."""
