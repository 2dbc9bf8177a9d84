"""The archive feature: Archive and Replay kinds, their reconcilers and runtime component, as
listed in broker.server.features."""

from broker.controlplane.catalog import KindReconciler
from broker.features.archive.component import ArchiveComponent
from broker.features.archive.kinds import ARCHIVE, ARCHIVE_KINDS, REPLAY
from broker.features.archive.reconcile import reconcile_archive, reconcile_replay
from broker.features.feature import Feature

ARCHIVE_FEATURE = Feature(
    name="archive",
    kinds=ARCHIVE_KINDS,
    # Archives before Replays (a Replay reads its Archive's spec from the world); both after the
    # eventing kinds, whose Brokers and Triggers they read.
    reconcilers=(
        KindReconciler(ARCHIVE.group, ARCHIVE.kind, reconcile_archive),
        KindReconciler(REPLAY.group, REPLAY.kind, reconcile_replay),
    ),
    component=ArchiveComponent,
)
