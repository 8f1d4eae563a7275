"""A garbage-collector probe for a worker: on ``PYTHONPATH`` with ``GC_PROBE_OUT=PATH`` set,
the process appends to ``PATH.<pid>`` a line per collection of 2 ms or more (wall ms,
generation, duration ms, objects collected), and at the 30th and 50th full collection the
tracked objects by type and their referents by type (what a collection walks).

    python docs/measure/latency_ticks.py 1920 OUT \
        '{"env": {"PYTHONPATH": "docs/measure/gc_probe", "GC_PROBE_OUT": "OUT/gc.log"}}'
"""
import gc, os, time, collections
_out = os.environ.get("GC_PROBE_OUT")
if _out:
    _f = open(f"{_out}.{os.getpid()}", "a", buffering=1)
    _t = {"n2": 0}
    def _cb(phase, info):
        if phase == "start":
            _t["s"] = time.perf_counter()
        else:
            d = (time.perf_counter() - _t.get("s", time.perf_counter())) * 1000
            if d >= 2:
                _f.write(f"{time.time()*1000:.0f} {info['generation']} {d:.1f} {info['collected']}\n")
            if info["generation"] == 2:
                _t["n2"] += 1
                if _t["n2"] in (30, 50):
                    objs = gc.get_objects()
                    c = collections.Counter(type(o).__module__ + "." + type(o).__qualname__ for o in objs)
                    r = collections.Counter()
                    for o in objs:
                        r[type(o).__module__ + "." + type(o).__qualname__] += len(gc.get_referents(o))
                    _f.write(f"# tracked {len(objs)} frozen {gc.get_freeze_count()}: {c.most_common(12)}\n")
                    _f.write(f"# referents {sum(r.values())}: {r.most_common(12)}\n")
                    del objs
    gc.callbacks.append(_cb)
