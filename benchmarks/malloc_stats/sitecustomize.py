"""Where the operator's memory is, every 2 s: put on the operator's PYTHONPATH by `operator_latency.py
--malloc-stats`, it appends a line to $CODEX_BENCH_MALLOC_STATS with the process's RSS, glibc's heap
(`mallinfo2`: in use, free) and CPython's own allocator (`sys._debugmallocstats`: 1 MiB arenas held, bytes in
live blocks). An arena goes back to the system only once every object in it is freed; glibc's free pages go
back on `malloc_trim`, which the operator calls after a mass delete (codex_operator/memory.py)."""

import os
import re
import sys
import tempfile
import threading
import time


def _sample(path: str) -> None:
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    page = os.sysconf("SC_PAGE_SIZE")
    while True:
        m = libc.mallinfo2()
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * page
        with tempfile.TemporaryFile() as f:  # _debugmallocstats writes to the C stderr
            saved = os.dup(2)
            os.dup2(f.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            f.seek(0)
            text = f.read().decode()
        arenas = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
        used = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
        num = lambda found: int(found.group(1).replace(",", "")) if found else -1  # noqa: E731
        with open(path, "a") as out:
            out.write(f"{time.time():.1f} rss={rss} glibc_in_use={m.uordblks} glibc_free={m.fordblks} "
                      f"py_arenas={num(arenas)} py_used={num(used)}\n")  # fmt: skip
        time.sleep(2)


if os.environ.get("CODEX_BENCH_MALLOC_STATS"):
    threading.Thread(
        target=_sample, args=(os.environ["CODEX_BENCH_MALLOC_STATS"],), daemon=True, name="malloc-stats"
    ).start()
