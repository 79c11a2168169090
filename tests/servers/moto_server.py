"""The S3-, SQS- and Kinesis-protocol server of the tests: moto's own server (moto[server]
from PyPI, installed by scripts/test), started as `moto_server` is, with one correction.

moto 5.2.5 splits a Kinesis shard wrongly: it puts the parent's records again (new records of
the closed parent) and keeps writing new records to the closed parent, so its children never
get any. Kinesis closes the parent for writes, keeps its records readable, and sends new
records to the children by hash key. The two methods below do that; the rest of the server is
moto's, unchanged.
"""

import sys

from moto.kinesis import models as km
from moto.kinesis.exceptions import InvalidArgumentError
from moto.server import main
from moto.utilities.utils import md5_hash


def get_shard_for_key(self, partition_key, explicit_hash_key):
    if not isinstance(partition_key, str) or len(partition_key) > 256:
        raise InvalidArgumentError("partition_key")
    if explicit_hash_key:
        int_key = int(explicit_hash_key)
        if int_key >= 2**128:
            raise InvalidArgumentError("explicit_hash_key")
    else:
        int_key = int(md5_hash(partition_key.encode("utf-8")).hexdigest(), 16)
    for shard in self.shards.values():
        if shard.is_open and shard.starting_hash <= int_key <= shard.ending_hash:
            return shard
    return None


def split_shard(self, shard_to_split, new_starting_hash_key):
    new_start = int(new_starting_hash_key)
    shard = self.shards[shard_to_split]
    if not (shard.starting_hash < new_start < shard.ending_hash) or not shard.is_open:
        raise InvalidArgumentError(message=f"cannot split {shard_to_split} at {new_start}")
    last_id = max(s._shard_id for s in self.shards.values())
    for i, (lo, hi) in enumerate(
        [(shard.starting_hash, new_start - 1), (new_start, shard.ending_hash)]
    ):
        child = km.Shard(last_id + 1 + i, starting_hash=lo, ending_hash=hi, parent=shard.shard_id)
        self.shards[child.shard_id] = child
    shard.is_open = False


km.Stream.get_shard_for_key = get_shard_for_key
km.Stream.split_shard = split_shard

if __name__ == "__main__":
    sys.exit(main())
