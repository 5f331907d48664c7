"""Benchmarks: ``python -m cutdist.bench {data,train-step,fid,decode,curves,scaling,grads} ...``, one JSON line out per run
(``cutdist.bench.cli``: what the commands share)."""
