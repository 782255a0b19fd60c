#!/usr/bin/env python3
"""Opens Zarr arrays on S3 with zarr-python (through obstore's S3 store) and compares them with the same arrays
on local disk, read with zarr-python too.

    zarr_s3_equal.py ENDPOINT BUCKET PREFIX LOCAL_DIR ARRAY...

Credentials and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION. Prints one line per
array (shape, dtype, chunks) and exits 1 when one differs in shape, type, chunk grid or any element.
"""
import os
import sys

import numpy as np
import zarr
from obstore.store import S3Store
from zarr.storage import ObjectStore


def main():
    endpoint, bucket, prefix, local_dir, *arrays = sys.argv[1:]
    failed = False
    for name in arrays:
        store = S3Store(
            bucket,
            prefix=f"{prefix.rstrip('/')}/{name}",
            endpoint=endpoint,
            region=os.environ["AWS_REGION"],
            access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )
        remote = zarr.open_array(ObjectStore(store, read_only=True), mode="r")
        local = zarr.open_array(os.path.join(local_dir, name), mode="r")
        a, b = remote[...], local[...]
        same = (
            remote.shape == local.shape
            and remote.dtype == local.dtype
            and remote.chunks == local.chunks
            and remote.shards == local.shards
            and np.array_equal(a, b)
        )
        print(f"{name}: shape {remote.shape} dtype {remote.dtype} chunks {remote.chunks} shards {remote.shards} "
              f"{'equal' if same else 'DIFFERENT'}")
        failed |= not same
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
