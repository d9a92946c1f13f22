"""Client of scripts/gateway_seed_e2e.sh: a seeded T=0.8 request twice through the front, once on the backend."""
import httpx, json, time
def ask(url, seed, n=24):
    body = {"prompt": "The sea at night is", "max_tokens": n, "stream": True, "return_token_ids": True,
            "temperature": 0.8, "seed": seed}
    t0 = time.perf_counter(); ids = []; times = []; text = ""
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        for ln in r.iter_lines():
            if ln.startswith("data: {"):
                ch = json.loads(ln[5:])["choices"]
                if ch and ch[0].get("token_ids"):
                    ids += ch[0]["token_ids"]; times.append(time.perf_counter() - t0); text += ch[0]["text"]
    return ids, times, text
front, back = "http://127.0.0.1:8732", "http://127.0.0.1:8731"
a = ask(front, 7); b = ask(front, 7); d = ask(back, 7)
print("front run1 == run2:", a[0] == b[0], "| front (3 windows of 8) == backend one window:", a[0] == d[0])
print("tokens", len(a[0]), "chunks with tokens", len(a[1]), "first chunk at %.2fs, last at %.2fs" % (a[1][0], a[1][-1]))
print("chunk times", [round(t, 2) for t in a[1]])
print(repr(a[2]))
m = httpx.get(front + "/metrics").text
print([l for l in m.splitlines() if l.startswith("elis:num_preemptions_total") or l.startswith("elis:generation_tokens_total")])
