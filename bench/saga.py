"""What a saga's durability costs: a 3-step saga against the same 3 requests made in a row.

Both modes call the same three echo endpoints of one natsreg service with a ~60-byte payload,
through one ``natsreg.Client``:

- plain: ``await client.request(...)`` three times, one after the other;
- saga:  ``await saga.run(client, payload)`` with three steps (each with a compensation, never
         called), so each saga also writes its state to the key-value bucket 4 times
         (created with step 1 started; then each step's reply with the next step started,
         or with the end), compare-and-set, to a file store.

nats-server (JetStream, file store in a temporary folder) runs as its own process, the service
and the callers in this one (so "CPU µs", this process's CPU time per saga or triple, counts
both the caller's and the service's side; a shared machine's load moves it less than the
rates). Concurrency N is N coroutines each running sagas (or triples of
requests) back to back. Rounds alternate which mode goes first; the table shows medians.

    python bench/saga.py            # 5 rounds of 2 s per mode and concurrency
    python bench/saga.py --quick    # 3 rounds of 0.5 s, to check it runs
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import nats

import natsreg
from natsreg.testing import NatsServer

SERVICE = "bench-saga"
STEPS = ("reserve", "charge", "ship")
PAYLOAD = {"order": 42, "items": ["book", "pen"], "total": 19.5}
# A loop never runs longer than this, whatever --seconds says.
MAX_ROUND_S = 30.0


async def plain(client: natsreg.Client) -> None:
    for step in STEPS:
        await client.request(f"{SERVICE}.{step}", PAYLOAD)


def saga_runner(saga: natsreg.Saga) -> object:
    async def run(client: natsreg.Client) -> None:
        result = await saga.run(client, PAYLOAD)
        assert result.status == "completed", result

    return run


async def round_of(
    run: object, client: natsreg.Client, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    """Latencies of the runs of one round, and this process's CPU seconds per run."""
    latencies: list[float] = []
    stop = time.monotonic() + min(seconds, MAX_ROUND_S)
    cpu = time.process_time()

    async def worker() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await run(client)  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, (time.process_time() - cpu) / max(1, len(latencies))


async def main(rounds: int, seconds: float) -> None:
    with NatsServer(jetstream=True) as server:
        nc = await nats.connect(server.url)
        async with natsreg.announce(nc, SERVICE, version="1.0.0") as svc:
            for step in (*STEPS, "undo"):

                @svc.endpoint(step)
                async def echo(req: natsreg.Request) -> bytes:
                    return b'{"ok": true}'

            await nc.flush()
            client = natsreg.Client(nc)
            saga = natsreg.Saga(
                "bench",
                steps=[
                    natsreg.Step(f"{SERVICE}.reserve", compensate=f"{SERVICE}.undo"),
                    natsreg.Step(f"{SERVICE}.charge", compensate=f"{SERVICE}.undo"),
                    natsreg.Step(f"{SERVICE}.ship"),
                ],
            )
            modes = {"plain": plain, "saga": saga_runner(saga)}
            await modes["saga"](client)  # type: ignore[operator]  # creates the bucket
            print(
                "| mode | concurrency | per s | p50 ms | p99 ms | CPU µs | per s vs plain "
                "| p50 vs plain | CPU vs plain |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for concurrency in (1, 16):
                rates: dict[str, list[float]] = {m: [] for m in modes}
                p50s: dict[str, list[float]] = {m: [] for m in modes}
                p99s: dict[str, list[float]] = {m: [] for m in modes}
                cpus: dict[str, list[float]] = {m: [] for m in modes}
                for index in range(rounds):
                    order = list(modes) if index % 2 == 0 else list(reversed(modes))
                    for mode in order:
                        lat, cpu = await round_of(modes[mode], client, concurrency, seconds)
                        lat.sort()
                        cpus[mode].append(cpu * 1e6)
                        rates[mode].append(len(lat) / seconds)
                        p50s[mode].append(lat[len(lat) // 2] * 1000)
                        p99s[mode].append(lat[int(len(lat) * 0.99)] * 1000)
                base_rate = statistics.median(rates["plain"])
                base_p50 = statistics.median(p50s["plain"])
                base_cpu = statistics.median(cpus["plain"])
                for mode in modes:
                    rate, p50 = statistics.median(rates[mode]), statistics.median(p50s[mode])
                    cpu = statistics.median(cpus[mode])
                    print(
                        f"| {mode} | {concurrency} | {rate:.0f} | {p50:.2f} | "
                        f"{statistics.median(p99s[mode]):.2f} | {cpu:.0f} | "
                        f"{rate / base_rate:.2f}x | {p50 / base_p50:.2f}x | {cpu / base_cpu:.2f}x |"
                    )
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.5 s")
    args = parser.parse_args()
    asyncio.run(main(3 if args.quick else 5, 0.5 if args.quick else 2.0))
