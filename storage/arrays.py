"""What both Zarr stores share: checksummed arrays written whole, and the error a damaged one
raises."""

from __future__ import annotations

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

CHECKSUM = Crc32cCodec()
"""Last codec of every stored array: a changed or truncated chunk fails its checksum on reading
instead of decoding to other values, or crashing the decompressor."""


class StoreCorruptError(ValueError):
    """Something a store marks as written cannot be read back as it was written."""


def write_array(group: zarr.Group, name: str, values: np.ndarray, dims: tuple[str, ...]) -> None:
    """`values` as one checksummed chunk named `name`, with xarray's dimension names."""
    dtype = str if values.dtype == object else values.dtype
    arr = group.create_array(name, shape=values.shape, dtype=dtype, chunks=values.shape or None,
                             dimension_names=dims, compressors=[ZstdCodec(level=0), CHECKSUM])
    arr[...] = values


def read_whole(array: zarr.Array, where: str, way_out: str) -> np.ndarray:
    """An array written by write_array, read back whole; a missing, truncated or changed chunk
    is a StoreCorruptError naming `where` and the array, with `way_out`."""
    if array.nchunks_initialized < array.nchunks:
        raise StoreCorruptError(f"{where}: the chunk of {array.path} is missing; {way_out}")
    try:
        return array[...]
    except (ValueError, RuntimeError) as error:
        raise StoreCorruptError(f"{where}: {array.path} fails its checksum or cannot be decoded "
                                f"({error}); {way_out}") from None
