"""notifymesh: shared code of the services (config, etcd membership, hash ring,
server factory, errors) and the Python client and CLI."""
