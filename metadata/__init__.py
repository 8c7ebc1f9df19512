"""The metadata service: topics and subscriptions, stored in etcd."""
