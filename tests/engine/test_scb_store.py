"""ScbStore on a member: writes alternate slots, a torn newest slot falls back, both bad refuses."""

import pytest

from dsafs.errors import MetadataError, MountRefused
from dsafs.ondisk.scb import min_member_bytes
from dsafs.ondisk.scbstore import ScbStore
from dsafs.testing.fakes import MemMember
from dsafs.units import MiB
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit

SIZE = MiB
RAW = min_member_bytes(SIZE)


@pytest.mark.allow_warnings      # the torn slot found by the third write is logged
async def test_writes_alternate_and_a_torn_slot_falls_back(caplog):
    m = MemMember(RAW, "/m/a.img")
    (first,) = await init_set("DSA1", "DATA", SIZE, [m])
    store = ScbStore(m)
    assert (await store.load()).sequence == 1
    second = await store.write(first.replace(generation=first.generation + 1))
    assert second.sequence == 2
    a, b = RAW - 8192, RAW - 4096
    assert m.data[a:a + 8] == m.data[b:b + 8] == b"DSAFSCB\0"       # both slots used
    m.data[b + 1000:b + 4096] = bytes(3096)                          # tear the newest (B)
    reread = await ScbStore(m).load()
    assert reread.sequence == 1 and reread.generation == first.generation
    third = await store.write(first.replace(generation=first.generation + 5))
    assert third.sequence == 3 and (await ScbStore(m).load()).generation == first.generation + 5
    assert ("member /m/a.img: damaged SCB slot B: checksum mismatch (torn or corrupt); "
            "rewriting it") in caplog.text
    assert await store.inspect() == []                  # the write went into the torn slot


async def test_both_slots_bad_is_refused_naming_the_member():
    m = MemMember(RAW, "/m/a.img")
    other = MemMember(RAW, "/m/b.img")
    await init_set("DSA1", "DATA", SIZE, [m, other])
    m.data[RAW - 8000] ^= 1       # slot A (the only one init wrote) corrupt; B never written
    with pytest.raises(MetadataError, match=r"^member /m/a.img: dsafs metadata is damaged in both "
                       r"SCB slots \(A: checksum mismatch \(torn or corrupt\); B: no dsafs magic\); "
                       r"it cannot be trusted: restore the member"):
        await ScbStore(m).load()
    before = bytes(m.data), bytes(other.data)
    with pytest.raises(MountRefused, match=r"^DSA1: member /m/a.img: dsafs metadata is damaged"):
        await VirtualUnit.assemble("DSA1", [other, m])
    assert (bytes(m.data), bytes(other.data)) == before
