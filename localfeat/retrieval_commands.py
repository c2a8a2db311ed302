"""CLI verbs `localfeat retrieve index` and `localfeat retrieve query` (see `localfeat.retrieval`)."""
from __future__ import annotations


def cmd_retrieve_index(args) -> int:
    from .cli import model_conf
    from .retrieval import build_index

    out = build_index(args.images, args.output, model=args.model, conf=model_conf(args), overwrite=args.overwrite)
    print(f"index written to {out}")
    return 0


def cmd_retrieve_query(args) -> int:
    from .retrieval import Retriever, write_json

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


def register(subparsers, add_command, groups) -> None:
    from .cli import add_model_args

    rt = subparsers.add_parser("retrieve", help="image retrieval: index a collection, query it")
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


__all__ = ["register"]
