"""The cost of a hop through a Faust in-memory channel and agent, as spillway's stages use them.

    .venv/bin/python -m bench.channel_hops

Two agents in a row pass a future along (the shape of a call's batch going router ->
Kafka sink stage); CPU time per call, one call at a time and 5,000 in flight.
"""

import asyncio
import time
from typing import Any

import faust
from faust.app.base import BootStrategy


class NoKafka(BootStrategy):
    enable_kafka = False

class App(faust.App):
    BootStrategy = NoKafka

app = App("hop", broker="kafka://127.0.0.1:1", web_enabled=False, autodiscover=False, store="memory://",
          topic_disable_leader=True)
a = app.channel()
b = app.channel()

@app.agent(a)
async def first(stream: Any) -> None:
    async for fut in stream:
        await b.send(value=fut)

@app.agent(b)
async def second(stream: Any) -> None:
    async for fut in stream:
        fut.set_result(None)

async def main() -> None:
    await app.start()
    app.flow_control.resume()
    loop = asyncio.get_running_loop()
    # warm
    for _ in range(200):
        f = loop.create_future()
        await a.send(value=f)
        await f
    n = 5000
    t0 = time.process_time()
    for _ in range(n):
        f = loop.create_future()
        await a.send(value=f)
        await f
    dt = time.process_time() - t0
    print(f"2 hops, sequential: {dt / n * 1e6:.1f} us per call ({dt / n / 2 * 1e6:.1f} us per hop)")
    futs = []
    t0 = time.process_time()
    for _ in range(n):
        f = loop.create_future()
        futs.append(f)
        await a.send(value=f)
    await asyncio.gather(*futs)
    dt = time.process_time() - t0
    print(f"2 hops, {n} in flight: {dt / n * 1e6:.1f} us per call")
    await app.stop()

if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main())
