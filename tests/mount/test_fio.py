"""fio with crc32c verification on a 2-member VU, buffered and O_DIRECT; then the members agree."""

import re

import pytest

from dsafs.units import MiB

from .support import assert_members_identical, fio_args, needs, needs_fuse, run_fio, show

pytestmark = [pytest.mark.mount, needs_fuse, needs("fio")]

VU = 64 * MiB


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_fio_randwrite_verify(served, tmp_path, direct):
    served.check("init", "DSA1", "--label", "FIO", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    vu = served.vu_path("DSA1")
    bs = "4k" if direct else "4k-64k"
    # Write phase with in-line verification (buffered: mostly from the page cache) ...
    r = run_fio(fio_args(vu, size=VU, direct=direct, bs=bs, extra=["--end_fsync=1"]), tmp_path)
    assert r.returncode == 0, f"fio failed:\n{r.stdout}\n{r.stderr}\n" + served.explain()
    assert "verify" not in r.stderr.lower(), r.stderr
    # ... and a second pass that re-reads every block with O_DIRECT, so each read reaches the
    # daemon (and so the members) instead of the page cache.
    r = run_fio(fio_args(vu, size=VU, direct=True, bs=bs, extra=["--verify_only"]), tmp_path)
    assert r.returncode == 0, \
        f"fio --verify_only failed:\n{r.stdout}\n{r.stderr}\n" + served.explain()

    info = show(served)
    assert info["state"] == "steady"
    a, b = info["members"]
    for m in (a, b):
        assert m["state"] == "source" and m["writes"] > 0 and m["written_bytes"] >= VU // 2, info
    assert (a["writes"], a["written_bytes"]) == (b["writes"], b["written_bytes"]), info
    assert sum(m["reads"] for m in info["members"]) > 0, info

    r = served.check("verify", "DSA1")
    assert "identical" in r.stdout
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], VU)
    # The fast FUSE intake (dsafs/service/intake.py) carried these requests.
    assert served.stop() == 0
    found = re.search(r"FUSE intake: (\d+) requests taken at once, (\d+) after a wait",
                      served.log(tail=400))
    assert found and int(found[1]) > 0 and int(found[2]) > 0, served.log()
