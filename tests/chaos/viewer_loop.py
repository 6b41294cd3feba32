"""``python viewer_loop.py URL COUNT``: COUNT WHEP viewers that reconnect whenever the server ends them.

Each session's report is printed as one JSON line when it ends; runs until killed (its own OS process,
because the server side's trio_asyncio changes ``asyncio.run`` process-wide).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from dragonfork.webrtc.client import run_whep_client


async def viewer(url: str, index: int) -> None:
    while True:
        report = await run_whep_client(url, duration=600, decode=False, timeout=10)
        print(json.dumps({"viewer": index, **dataclasses.asdict(report)}), flush=True)
        await asyncio.sleep(0.1 if report.status == 201 else 0.3)


async def main(url: str, count: int) -> None:
    await asyncio.gather(*(viewer(url, index) for index in range(count)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
