"""The central, versioned weight broadcast: learner rank 0 -> every rollout actor.

Two transports behind one interface (``make_broadcaster``): the Ray object store (one ``ray.put`` of
the flat numpy buffers the publisher's parameters live in, per version; zero-copy reads, one copy into
each replica's own flat buffer; CPU clusters) and a bucketed torch.distributed
broadcast (NCCL on GPUs; tested here with gloo). Only trainable parameters travel; every load is
versioned so a replica loads only newer weights.
"""

from vlaforge.runtime.weights.buckets import Bucket, BucketPlan, Segment, plan_buckets
from vlaforge.runtime.weights.collective import GROUP_BACKENDS, CollectiveBroadcaster, rendezvous_address
from vlaforge.runtime.weights.flat import FlatParams, FlatReplica, map_into
from vlaforge.runtime.weights.object_store import LOAD_MODES, WeightPublisher, WeightsHandle, WeightSubscriber
from vlaforge.runtime.weights.packing import (
    FlatWeights, Layout, LayoutMismatchError, ParamSpec, check_layout, layout_of_module, pack, unpack_into,
)
from vlaforge.runtime.weights.registry import (
    BROADCASTERS, BroadcastConfig, WeightSink, WeightSource, broadcaster_from_config, make_broadcaster,
)

__all__ = [
    "BROADCASTERS", "GROUP_BACKENDS", "LOAD_MODES", "BroadcastConfig", "Bucket", "BucketPlan", "CollectiveBroadcaster",
    "FlatParams", "FlatReplica", "FlatWeights", "Layout", "LayoutMismatchError", "ParamSpec", "Segment", "WeightPublisher", "WeightSink",
    "WeightSource", "WeightSubscriber", "WeightsHandle", "broadcaster_from_config", "check_layout",
    "layout_of_module", "make_broadcaster", "map_into", "pack", "plan_buckets", "rendezvous_address", "unpack_into",
]
