"""The cluster configuration in etcd (contracts.CONFIG, one JSON object), read and
written one setting at a time. Keys and values are checked against
notifymesh.server.config; every service follows the key with a watch
(process.follow_config), so what is written here reaches them within moments."""

import json
import logging

from gen.notifymesh.v1 import cluster_pb2
from notifymesh import errors
from notifymesh.contracts import CONFIG
from notifymesh.log import fields
from notifymesh.server import config as config_mod
from notifymesh.server import egress

log = logging.getLogger(__name__)

WRITE_TRIES = 3  # a write retries when another changed the object between its read and its transaction


class ClusterSettings:
    def __init__(self, etcd, config=None):
        """config: this process's live config, whose allowed_networks (from its environment
        too) holds where no allowed_networks is stored."""
        self._etcd, self._txn, self._config = etcd, etcd.transactions, config

    async def _read(self):
        """(the stored object, its kv or None)."""
        kv = await self._etcd.get(CONFIG)
        if kv is None:
            return {}, None
        try:
            values = json.loads(kv.value)
        except ValueError:
            values = None
        if not isinstance(values, dict):
            raise errors.FailedPrecondition(f"{CONFIG.decode()} in etcd is not a JSON object; delete it "
                                            "(etcdctl del) and set the values again")
        return values, kv

    async def get(self, key: str = "") -> list[cluster_pb2.ConfigSetting]:
        if key and key not in config_mod.FIELDS:
            raise errors.InvalidArgument(f"unknown config key {key!r}; the keys: {', '.join(config_mod.FIELDS)}")
        values, _ = await self._read()
        return [_setting(name, values) for name in config_mod.FIELDS if not key or name == key]

    async def set(self, key: str, text: str, reset: bool = False) -> cluster_pb2.ConfigSetting:
        """Writes key's value (or removes it with reset) with a compare-and-swap on the
        object; the merged result must pass config.check."""
        value = None if reset else config_mod.setting_value(key, text)
        if reset and key not in config_mod.FIELDS:
            raise errors.InvalidArgument(f"unknown config key {key!r}; the keys: {', '.join(config_mod.FIELDS)}")
        for _ in range(WRITE_TRIES):
            values, kv = await self._read()
            values = {k: v for k, v in values.items() if k != key}
            if not reset:
                values[key] = value
            try:
                config_mod.check(config_mod.load(env={}, etcd_values=values))
            except ValueError as e:  # a key written by hand that no setting has
                raise errors.FailedPrecondition(f"the config in etcd: {e}") from None
            if key == "erasure_hook_url" and value:  # a URL the frontends will POST to
                allowed = values.get("allowed_networks", getattr(self._config, "allowed_networks", ""))
                await egress.check_url("erasure_hook_url", value, config_mod.parse_networks(allowed))
            compare = (self._txn.mod(CONFIG) == kv.mod_revision) if kv else (self._txn.version(CONFIG) == 0)
            encoded = json.dumps(values, sort_keys=True).encode()
            written, _ = await self._etcd.transaction(compare=[compare], success=[self._txn.put(CONFIG, encoded)],
                                                      failure=[])
            if written:
                log.info("cluster config set", extra=fields(key=key, value=value))
                return _setting(key, values)
        raise errors.Aborted("the cluster config changed meanwhile; try again")


def _setting(key: str, values: dict) -> cluster_pb2.ConfigSetting:
    default = config_mod.FIELDS[key].default
    stored = key in values
    return cluster_pb2.ConfigSetting(key=key, value=json.dumps(values[key] if stored else default),
                                     default_value=json.dumps(default), stored=stored,
                                     restart_required=key in config_mod.RESTART_REQUIRED)
