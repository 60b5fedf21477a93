"""`make bench`: the pipeline measured against its limits, on the real local stack.

One run starts redis-server (local/redis.conf), moto's S3 server, gunicorn with the production
settings and the loop runner, all on loopback, and measures ingest throughput and latency,
latency at a fixed modest rate, end-to-end lag, Redis memory per buffered event and the
consumer's drain rate, next to same-run baselines (a do-nothing WSGI app under the same
gunicorn settings, and the "direct write" design that stores each request in S3 itself).

Modules, one concern each:
- `payloads`: realistic events and the request bodies built from them;
- `load`: the load generators (wrk with a Lua script, or an asyncio client) and their results;
- `cpu`: who used which CPU during a measurement (the machine is shared and has 2 cores);
- `procs`: the processes of the stack, started and stopped;
- `baselines`: the do-nothing and direct-write WSGI apps;
- `backlog`: filling the stream, Redis memory per event, drain rate, end-to-end lag;
- `report`: the table, the JSON file and the chart;
- `context`: what the phases share: the settings, the plan, and `Bench` (the stack, the results,
  measurements at saturation and at a fixed rate);
- `phases/`: one module per phase, each runnable alone (`python -m local.bench --phase NAME`);
- `run`: the orchestrator: starts what the chosen phases need, runs them in order, writes the
  report (`python -m local.bench`);
- `profile`: py-spy profiles of the ingest workers and the consumer
  (`python -m local.bench.profile`).
"""
