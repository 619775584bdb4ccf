#!/usr/bin/env python3
"""Retrieval evaluation against a running chatq stack (ops/eval/run starts one).

For each corpus and format: creates a knowledge base, uploads the corpus in that format, waits
until it is ingested, then asks every question of the corpus's question set through
POST /v1/knowledge-bases/{id}/search in three modes (keyword = BM25 only, vector = embeddings
only, hybrid = what answers use). A result hits when it belongs to the gold section: its
location (heading path) has a part starting with the section number ("4.5." or "4.5 "), or a
line of its text does (a chunk that starts the section). Reports hit@1/3/5 and MRR@10 per
corpus, format and mode, and replays weighted reciprocal rank fusion offline over the keyword
and vector candidate lists for a grid of vector weights (the keyword weight is 1), which is how
the default weights were tuned.
"""
import argparse, gzip, json, os, shutil, subprocess, sys, tempfile, time, urllib.request

RRF_K = 60.0
CANDIDATES = 50
WEIGHTS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, None]  # None: vector only

FAQ = "/usr/share/doc/debian/FAQ"
REF = "/usr/share/doc/debian-reference-common/docs"
HERE = os.path.dirname(os.path.abspath(__file__))
CORPORA = {
    "debian-faq": {
        "questions": os.path.join(HERE, "debian-faq-questions.jsonl"),
        "package": "debian-faq",
        "html": lambda: sorted(os.path.join(FAQ, f) for f in os.listdir(FAQ) if f.endswith(".en.html")),
        "pdf": lambda: [os.path.join(FAQ, "debian-faq.en.pdf.gz")],
        "text": lambda: [os.path.join(FAQ, "debian-faq.en.txt.gz")],
    },
    "debian-reference": {
        "questions": os.path.join(HERE, "debian-reference-questions.jsonl"),
        "package": "debian-reference-en",
        "html": lambda: sorted(os.path.join(REF, f) for f in os.listdir(REF) if f.endswith(".en.html")),
        "pdf": lambda: [os.path.join(REF, "debian-reference.en.pdf")],
        "text": lambda: [os.path.join(REF, "debian-reference.en.txt.gz")],
    },
}
FORMATS = ["html", "pdf", "text"]


def call(api, key, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + key)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read() or b"null")


def upload(api, key, kb, paths, tmp):
    """Uploads `paths` (gzip files decompressed first) in one batch; returns the batch id."""
    args = ["curl", "-sS", "-f", "-X", "POST", f"{api}/v1/knowledge-bases/{kb}/documents", "-H", f"Authorization: Bearer {key}"]
    for p in paths:
        if p.endswith(".gz"):
            plain = os.path.join(tmp, os.path.basename(p)[:-3])
            with gzip.open(p) as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            p = plain
        args += ["-F", f"files=@{p}"]
    out = subprocess.run(args, check=True, capture_output=True).stdout
    return json.loads(out)["batch_id"]


def settle(api, key, batch, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        b = call(api, key, "GET", f"/v1/ingestion-batches/{batch}")
        if b["counts"]["queued"] == 0 and b["counts"]["processing"] == 0:
            return b
        time.sleep(0.5)
    sys.exit(f"batch {batch} not ingested within {timeout} s")


def hits(result, section):
    """Whether a search result belongs to `section` ("4.5.")."""
    bare = section.rstrip(".")
    starts = lambda s: s.startswith(section) or s.startswith(bare + " ") or s.startswith(bare + "\u00a0")
    parts = (result.get("location") or "").split(" > ")
    if any(starts(p.strip()) for p in parts):
        return True
    return any(starts(line.lstrip("#").strip()) for line in result["content"].split("\n"))


def rank_of(results, section, depth=10):
    for i, r in enumerate(results[:depth]):
        if hits(r, section):
            return i + 1
    return None


def metrics(ranks):
    n = len(ranks)
    at = lambda k: sum(1 for r in ranks if r is not None and r <= k) / n
    mrr = sum(1.0 / r for r in ranks if r is not None) / n
    return {"hit@1": at(1), "hit@3": at(3), "hit@5": at(5), "mrr": mrr}


def fuse(keyword, vector, w):
    """Weighted RRF over two ranked result lists (keyword weight 1, vector weight w)."""
    if w is None:
        return vector
    scores, by_id = {}, {}
    for weight, lst in ((1.0, keyword), (w, vector)):
        for i, r in enumerate(lst):
            scores[r["chunk_id"]] = scores.get(r["chunk_id"], 0.0) + weight / (RRF_K + i + 1)
            by_id[r["chunk_id"]] = r
    return [by_id[c] for c, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--embeddings", default="stand-in")
    ap.add_argument("--corpus", action="append", choices=sorted(CORPORA))
    ap.add_argument("--format", action="append", choices=FORMATS)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    corpora = a.corpus or sorted(CORPORA)
    formats = a.format or FORMATS
    rows, grid = [], {}
    tmp = tempfile.mkdtemp(prefix="chatq-eval-")
    try:
        for corpus in corpora:
            c = CORPORA[corpus]
            try:
                files = {f: c[f]() for f in formats}
            except FileNotFoundError as e:
                sys.exit(f"{e.filename} is missing: apt-get install {c['package']}")
            questions = [json.loads(l) for l in open(c["questions"]) if l.strip()]
            for fmt in formats:
                kb = call(a.api, a.key, "POST", "/v1/knowledge-bases", {"name": f"eval {corpus} {fmt}"})["id"]
                started = time.time()
                batch = settle(a.api, a.key, upload(a.api, a.key, kb, files[fmt], tmp))
                ingest_s = time.time() - started
                docs = batch["documents"]
                failed = [d["filename"] for d in docs if d["status"] != "ready"]
                if failed:
                    print(f"warning: {corpus} {fmt}: not ingested: {failed}", file=sys.stderr)
                chunks = sum(d.get("chunk_count") or 0 for d in docs)
                ranks = {"keyword": [], "vector": [], "hybrid": []}
                lists = []
                latency = []
                for q in questions:
                    per_mode = {}
                    for mode in ("keyword", "vector", "hybrid"):
                        k = 10 if mode == "hybrid" else CANDIDATES
                        t = time.time()
                        res = call(a.api, a.key, "POST", f"/v1/knowledge-bases/{kb}/search",
                                   {"query": q["question"], "k": k, "mode": mode})["results"]
                        if mode == "hybrid":
                            latency.append((time.time() - t) * 1000)
                        per_mode[mode] = res
                        ranks[mode].append(rank_of(res, q["section"]))
                    lists.append((per_mode["keyword"], per_mode["vector"], q["section"]))
                for mode, r in ranks.items():
                    row = {"corpus": corpus, "format": fmt, "embeddings": a.embeddings, "ranker": mode,
                           "questions": len(r), "chunks": chunks, "ingest_s": round(ingest_s, 1)}
                    row.update(metrics(r))
                    if mode == "hybrid":
                        latency.sort()
                        row["p50_ms"] = round(latency[len(latency) // 2], 1)
                    rows.append(row)
                for w in WEIGHTS:
                    r = [rank_of(fuse(kw, vec, w), s) for kw, vec, s in lists]
                    m = metrics(r)
                    m["name"] = f"{corpus} {fmt}"
                    grid.setdefault(w, []).append(m)
                misses = [q["section"] for q, r in zip(questions, ranks["hybrid"]) if r is None or r > 3]
                print(f"{corpus} {fmt}: {chunks} chunks, ingested in {ingest_s:.1f} s; hybrid misses at 3: {' '.join(misses)}",
                      file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nembeddings: {a.embeddings}\n")
    print("| corpus | format | ranker | hit@1 | hit@3 | hit@5 | MRR@10 | chunks |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['corpus']} | {r['format']} | {r['ranker']} | {r['hit@1']:.3f} | {r['hit@3']:.3f} | {r['hit@5']:.3f} | {r['mrr']:.3f} | {r['chunks']} |")
    print("\nWeighted RRF replayed offline (keyword weight 1), mean over the corpora and formats above:\n")
    print("| vector weight | hit@1 | hit@3 | hit@5 | MRR@10 | worst hit@3 |")
    print("|---|---|---|---|---|---|")
    for w in WEIGHTS:
        ms = grid[w]
        mean = lambda key: sum(m[key] for m in ms) / len(ms)
        label = "vector only" if w is None else ("keyword only" if w == 0 else f"{w}")
        print(f"| {label} | {mean('hit@1'):.3f} | {mean('hit@3'):.3f} | {mean('hit@5'):.3f} | {mean('mrr'):.3f} | {min(m['hit@3'] for m in ms):.3f} |")
    names = [m["name"] for m in grid[WEIGHTS[0]]]
    print("\nhit@3 of the replayed fusion per corpus and format:\n")
    print("| vector weight | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for w in WEIGHTS:
        label = "vector only" if w is None else ("keyword only" if w == 0 else f"{w}")
        print(f"| {label} | " + " | ".join(f"{m['hit@3']:.3f}" for m in grid[w]) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "grid": {str(k): v for k, v in grid.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
