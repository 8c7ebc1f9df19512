"""The frontend service: the public notifymesh.v1 API."""
