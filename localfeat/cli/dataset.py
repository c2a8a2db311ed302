"""Verb groups `dataset` (training scenes from COLMAP models, merging) and `hpatches`
(synthetic HPatches-format sequences, download of the official ones)."""
from __future__ import annotations

from .args import add_command


def cmd_dataset_from_colmap(args) -> int:
    from ..datasets.colmap_scenes import build_scene

    entry = build_scene(args.model_dir, args.images, args.output, scene=args.scene,
                        depth_maps=None if args.no_dense else (args.depth_maps or "auto"),
                        min_shared=args.min_shared, min_overlap=args.min_overlap,
                        max_pairs_per_image=args.max_pairs_per_image, image_mode=args.image_mode,
                        overwrite=args.overwrite)
    print(f"scene {entry['name']}: {entry['num_images']} images, {entry['num_pairs']} pairs, "
          f"{entry['depth_source']} depth -> {args.output}/index.json")
    return 0


def cmd_dataset_merge(args) -> int:
    from ..datasets.colmap_scenes import merge_datasets

    index = merge_datasets(args.datasets, args.output, image_mode=args.image_mode)
    print(f"{args.output}: {len(index['scenes'])} scenes: " + ", ".join(s["name"] for s in index["scenes"]))
    return 0


def cmd_dataset_to_megadepth(args) -> int:
    from ..datasets.megadepth import export_megadepth

    files = export_megadepth(args.dataset, args.output, scenes=args.scenes, image_mode=args.image_mode,
                             min_overlap=args.min_overlap, max_overlap=args.max_overlap)
    for kind, paths in files.items():
        print(f"{kind:10s} " + " ".join(str(p) for p in paths))
    return 0


def cmd_dataset_gather_photos(args) -> int:
    from ..datasets.training_photos import gather

    counts = gather(args.output, args.packages, args.min_side, max_short_side=args.max_short_side or None)
    for source, n in counts.items():
        print(f"{source:32s} {n:5d}")
    print(f"{'total':32s} {sum(counts.values()):5d} photos in {args.output} (licences in {args.output}/licences)")
    return 0


def cmd_synth(args) -> int:
    from ..datasets.synth import generate

    names = generate(args.output, n_sequences=args.sequences, seed=args.seed, photos=args.photos,
                     image_max_size=args.max_size)
    print(f"wrote {len(names)} sequences ({sum(n.startswith('i_') for n in names)} i_, "
          f"{sum(n.startswith('v_') for n in names)} v_) to {args.output}")
    return 0


def cmd_download(args) -> int:
    from ..datasets.hpatches import download_hpatches

    out = download_hpatches(args.output, sha256=args.sha256)
    print(f"HPatches sequences in {out}")
    return 0


def register(sub, groups) -> None:
    ds = groups["dataset"]
    p = add_command(ds, "from-colmap", "training dataset from a COLMAP model: K, pose, depth per image, "
                    "covisible pairs, relative paths",
                    "localfeat dataset from-colmap out/sparse photos/ -o dataset/ --scene sacre_coeur",
                    cmd_dataset_from_colmap)
    p.add_argument("model_dir", help="COLMAP model folder (cameras/images/points3D .bin or .txt)")
    p.add_argument("images", help="the images of the model")
    p.add_argument("-o", "--output", required=True, help="dataset folder (created, or extended with a scene)")
    p.add_argument("--scene", default=None, help="scene name (default: the model folder's parent name)")
    p.add_argument("--depth-maps", default=None,
                   help="folder of COLMAP dense depth maps (default: MODEL_DIR/../stereo/depth_maps if present)")
    p.add_argument("--no-dense", action="store_true", help="ignore dense depth maps; sparse depth only")
    p.add_argument("--min-shared", type=int, default=20, help="pairs share at least N 3D points")
    p.add_argument("--min-overlap", type=float, default=0.1, help="pairs have shared/min(points) >= this")
    p.add_argument("--max-pairs-per-image", type=int, default=None, help="keep the best N pairs of each image")
    p.add_argument("--image-mode", choices=["copy", "hardlink"], default="copy",
                   help="how images enter the dataset")
    p.add_argument("--overwrite", action="store_true", help="replace a scene of the same name")

    p = add_command(ds, "merge", "merge the scenes of several datasets into one",
                    "localfeat dataset merge ds_a/ ds_b/ -o ds_all/", cmd_dataset_merge)
    p.add_argument("datasets", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--image-mode", choices=["copy", "hardlink"], default="copy")

    p = add_command(ds, "to-megadepth", "write a dataset in the MegaDepth layout with LoFTR and D2-Net index files "
                    "(and MegaDepth-1500-style pose pairs)",
                    "localfeat dataset to-megadepth dataset/ -o megadepth/ --max-overlap 0.7", cmd_dataset_to_megadepth)
    p.add_argument("dataset", help="a dataset of `localfeat dataset from-colmap`")
    p.add_argument("-o", "--output", required=True, help="the MegaDepth root to write")
    p.add_argument("--scenes", nargs="*", default=None, help="scenes to write (default: all)")
    p.add_argument("--image-mode", choices=["copy", "hardlink"], default="hardlink")
    p.add_argument("--min-overlap", type=float, default=None, help="LoFTR index: pairs with overlap > this")
    p.add_argument("--max-overlap", type=float, default=None, help="LoFTR index: pairs with overlap <= this")

    from ..datasets.training_photos import DEBIAN_PACKAGES

    p = add_command(ds, "gather-photos", "real, licence-clean training photos from Debian packages (wallpapers, "
                    "OpenCV samples) and scikit-image, with their licence files (needs apt-get and dpkg-deb)",
                    "localfeat dataset gather-photos -o data/train_photos", cmd_dataset_gather_photos)
    p.add_argument("-o", "--output", required=True, help="output folder (must not exist)")
    p.add_argument("--min-side", type=int, default=240, help="minimum shorter side in pixels (default 240)")
    p.add_argument("--max-short-side", type=int, default=720,
                   help="store larger photos downscaled to this shorter side (default 720; 0 = keep)")
    p.add_argument("--packages", nargs="*", default=list(DEBIAN_PACKAGES), help="Debian packages to read")

    hp = sub.add_parser("hpatches", help="HPatches-format data: synthetic sequences, download")
    hp_sub = hp.add_subparsers(dest="hpatches_command", metavar="ACTION")
    p = add_command(hp_sub, "synth", "write synthetic HPatches-format sequences from photos (offline)",
                    "localfeat hpatches synth -o data/synth --sequences 10 --seed 0", cmd_synth)
    p.add_argument("-o", "--output", required=True, help="folder to write <seq>/1.ppm..6.ppm, H_1_2..H_1_6")
    p.add_argument("--sequences", type=int, default=10, help="number of sequences, alternately i_ and v_")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photos", default=None, help="folder of photos (default: scikit-image's bundled photos)")
    p.add_argument("--max-size", type=int, default=640, help="max(W, H) of the images written")
    p = add_command(hp_sub, "download", "download and extract the official HPatches sequences (about 1.3 GB)",
                    "localfeat hpatches download -o data/", cmd_download)
    p.add_argument("-o", "--output", required=True, help="folder for the archive and hpatches-sequences-release/")
    p.add_argument("--sha256", default=None, help="expected sha256 of the archive, if you know it")
