"""The Azure ML v2 backend, plain REST (no azureml, no azure.ai.ml): the components the steps become
(components.py), the code asset as azure-ai-ml hashes it (code.py), the REST verbs (client.py), the
registrations (publisher.py) and the backend itself."""
