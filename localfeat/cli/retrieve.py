"""Verb group `retrieve`: index a collection, query it, fit PCA whitening (see `localfeat.retrieval`)."""
from __future__ import annotations

from pathlib import Path

from .args import add_command, add_model_args, model_spec


def cmd_retrieve_index(args) -> int:
    from ..retrieval import build_index

    model, conf = model_spec(args)
    out = build_index(args.images, args.output, model=model, conf=conf, overwrite=args.overwrite)
    print(f"index written to {out}")
    return 0


def cmd_retrieve_query(args) -> int:
    from ..retrieval import Retriever, write_json

    r = Retriever(args.index, device=args.device)
    q = r.extractor.extract(args.image)
    results = r.query(args.image, top=args.top, shortlist=args.shortlist, knn=args.knn, method=args.verify,
                      threshold=args.ransac_thresh, min_inliers=args.min_inliers, features=q)
    print(f"{'rank':>4}  {'score':>10}  {'inliers':>7}  {'votes':>6}  image")
    for k, res in enumerate(results, start=1):
        print(f"{k:>4}  {res.score:>10.3f}  {res.inliers:>7d}  {res.votes:>6d}  {res.image}")
    if args.json:
        print(f"JSON written to {write_json(results, args.json)}")
    if args.picture:
        print(f"picture written to {r.picture(args.image, results, args.picture, count=args.picture_count, features=q)}")
    return 0


def cmd_retrieve_fit_pca(args) -> int:
    import numpy as np

    from ..io.h5 import FeatureStore
    from ..whitening import PCAWhitening

    path = Path(args.features)
    store = FeatureStore(path / "features.h5" if path.is_dir() else path, mode="r")
    rng = np.random.default_rng(0)
    chunks = []
    for name in store.names():
        d = store.get(name).descriptors
        if args.max_per_image is not None and len(d) > args.max_per_image:
            d = d[rng.choice(len(d), args.max_per_image, replace=False)]
        chunks.append(np.asarray(d, np.float32))
    if not chunks:
        raise ValueError(f"{args.features} holds no features to fit a PCA on")
    pca = PCAWhitening.fit(np.concatenate(chunks), dim=args.dim, eps=args.eps)
    print(f"PCA {pca.input_dim} -> {pca.dim} fit on {sum(map(len, chunks))} descriptors of {len(chunks)} images; "
          f"written to {pca.save(args.output)}")
    return 0


def register(sub, groups) -> None:
    rt = sub.add_parser("retrieve", help="image retrieval: index a collection, query it")
    rt_sub = rt.add_subparsers(dest="retrieve_task", metavar="TASK")
    p = add_command(rt_sub, "index", "extract the features of a collection into a retrieval index folder",
                    "localfeat retrieve index photos/ -o index/ --model aliked --resize-max 640",
                    cmd_retrieve_index)
    p.add_argument("images", help="folder (recursive), glob or text file listing images")
    p.add_argument("-o", "--output", required=True, help="index folder (features.h5 + index.json)")
    add_model_args(p, default_model="aliked")
    p.add_argument("--overwrite", action="store_true", help="re-extract everything")

    p = add_command(rt_sub, "query", "rank the indexed images for a query image (voting + geometric verification)",
                    "localfeat retrieve query index/ photos/a.jpg --top 5 --json a.json --picture a.png",
                    cmd_retrieve_query)
    p.add_argument("index", help="index folder written by `localfeat retrieve index`")
    p.add_argument("image", help="query image (excluded from the results when it is in the index)")
    p.add_argument("--top", type=int, default=10, help="print/write the N best images")
    p.add_argument("--json", default=None, metavar="FILE",
                   help='write [{"image": name, "score": float, "inliers": int}, ...], best first')
    p.add_argument("--picture", default=None, metavar="PNG", help="the query beside its best matches")
    p.add_argument("--picture-count", type=int, default=3, help="results drawn in --picture")
    p.add_argument("--shortlist", type=int, default=20, help="most voted images verified geometrically")
    p.add_argument("--knn", type=int, default=5, help="database neighbours per query descriptor (votes)")
    p.add_argument("--verify", choices=["fundamental", "homography"], default="fundamental")
    p.add_argument("--ransac-thresh", type=float, default=3.0, help="RANSAC threshold, pixels")
    p.add_argument("--min-inliers", type=int, default=15, help="fewer inliers count as 0")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")

    p = add_command(rt_sub, "fit-pca", "fit PCA whitening on the descriptors of a features.h5 or index folder "
                    "(e.g. DeLF's 1024 -> 40-D: index with --conf pca=None, then extract with pca=FILE)",
                    "localfeat retrieve fit-pca index_raw/ -o delf_pca.npz --dim 40", cmd_retrieve_fit_pca)
    p.add_argument("features", help="features.h5, or an index folder holding one")
    p.add_argument("-o", "--output", required=True, help="PCA file to write (.npz)")
    p.add_argument("--dim", type=int, default=40, help="output dimension")
    p.add_argument("--eps", type=float, default=0.0, help="added to the variances when whitening")
    p.add_argument("--max-per-image", type=int, default=None, help="random subset of N descriptors per image")

