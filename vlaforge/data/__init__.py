"""Demonstration and video datasets in the LeRobot v3.0 layout, and demo generation.

    format.py       paths, feature dicts, parquet column types of the v3.0 layout
    writer.py       DatasetWriter: episodes -> parquet + mp4 + meta/, atomic
    reader.py       DatasetReader: ours and LeRobot's datasets -> numpy columns + decoded frames
    video.py        PyAV mp4 encode / decode (h264, AV1)
    stats.py        stats.json (min max mean std count q01..q99)
    dataset.py      ChunkDataset (torch Dataset of action chunks + pad masks), collate
    sampler.py      train/val episode splits, ShardSampler (rank sharding), iterate_batches
    demos.py        generate_demos: scripted experts on Ray actors -> one cached dataset
    demo_worker.py  the Ray actor of generate_demos

Kept import-free so that loading a recipe (which imports ``vlaforge.data.config``) stays cheap.
"""
