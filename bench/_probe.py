import asyncio, time, aiohttp, orjson, httpx
from bench.common import service
BODY={"workflow":"solid","params":{"width":8,"height":8}}
async def seq(url):
    async with httpx.AsyncClient(base_url=url) as c:
        for name, fn in [("httpx GET healthz", lambda: c.get("/healthz")), ("httpx POST healthz-404", lambda: c.post("/healthz", json=BODY)),
                         ("httpx POST tasks", lambda: c.post("/tasks", json=BODY)), ("httpx POST tasks/x/cancel", lambda: c.post("/tasks/00000000-0000-0000-0000-000000000000/cancel"))]:
            lat=[]
            for i in range(60):
                t=time.perf_counter(); r=await fn(); lat.append(time.perf_counter()-t)
            lat.sort(); print(name, r.status_code, f"p50 {lat[30]*1000:.1f}ms", flush=True)
with service(endpoints=1) as (url, s, parts):
    asyncio.run(seq(url))
