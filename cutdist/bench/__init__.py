"""Benchmarks: ``python -m cutdist.bench {data,train-step,fid} ...``, one JSON line out per run."""
