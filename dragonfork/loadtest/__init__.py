"""``dragonfork loadtest``: many real WebRTC viewers against one stream, spread over worker processes.

- ``viewer``: one viewer (aiortc peer, WHEP or Janus signalling) that counts RTP instead of decoding it.
- ``worker``: a worker process running many viewers on one asyncio loop, driven over stdin/stdout.
- ``runner``: the orchestrator (Trio) that starts workers, schedules joins, samples the server, keeps score.
- ``server_probe``: finds a local server's process by its listening port and samples its CPU and memory.
- ``report``: percentiles and the JSON + Markdown report.
- ``cli``: the command line.
"""
