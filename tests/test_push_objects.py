"""What a push sends: the objects each new commit changed, against dulwich's own object walk.

``remote_branch.objects_since`` lists, for the commits between the remote's
tip and what is pushed, each tree's entries that are not at the same path in
its parent. It must never leave out an object the remote lacks (dulwich's
MissingObjectFinder, which walks every object of the tip, is the reference)
and never send one the pushed commit does not reach. The end-to-end tests
push through a real receive-pack and check the remote with
``git fsck --strict``; this one covers random trees and edits.
"""

from __future__ import annotations

from dulwich.object_store import MemoryObjectStore, MissingObjectFinder
from dulwich.objects import Blob, Commit, ObjectID
from hypothesis import given, settings
from hypothesis import strategies as st

from gitsync.git.remote_branch import objects_since
from gitsync.git.trees import FILE, Entry, build

EXEC = 0o100755
LINK = 0o120000
GITLINK = 0o160000
names = st.sampled_from(["a", "b", "c", "d.yaml", "e.ts"])
paths = st.lists(names, min_size=1, max_size=4).map("/".join)
contents = st.sampled_from([b"one", b"two", b"three", b"", b"four\n"])
modes = st.sampled_from([FILE, FILE, FILE, EXEC, LINK, GITLINK])
trees = st.dictionaries(paths, st.tuples(modes, contents), max_size=12)


def _commit(
    store: MemoryObjectStore, files: dict[str, tuple[int, bytes]], parent: ObjectID | None
) -> ObjectID:
    entries: dict[str, Entry] = {}
    for path, (mode, data) in files.items():
        if mode == GITLINK:
            entries[path] = (mode, ObjectID(Blob.from_string(b"submodule " + data).id))
            continue
        blob = Blob.from_string(data)
        store.add_object(blob)
        entries[path] = (mode, blob.id)
    new: dict = {}
    tree = build(entries, new)
    for obj in new.values():
        store.add_object(obj)
    commit = Commit()
    commit.tree = tree
    commit.parents = [parent] if parent is not None else []
    commit.author = commit.committer = b"t <t@example.com>"
    commit.author_time = commit.commit_time = 0
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"m"
    store.add_object(commit)
    return commit.id


def _reachable(store: MemoryObjectStore, commit: ObjectID) -> set[ObjectID]:
    """Every object ``commit`` reaches: its ancestors, their trees, blobs and links."""
    found: set[ObjectID] = set()
    pending = [commit]
    while pending:
        oid = pending.pop()
        if oid in found:
            continue
        found.add(oid)
        obj = store[oid]
        if isinstance(obj, Commit):
            pending.extend([obj.tree, *obj.parents])
            continue
        for entry in obj.iteritems():
            if entry.mode == 0o040000:
                pending.append(entry.sha)
            elif entry.mode != GITLINK:
                found.add(entry.sha)
    return found


@settings(max_examples=300, deadline=None)
@given(base=trees, steps=st.lists(trees, min_size=1, max_size=3))
def test_the_objects_since_the_remote_tip_are_all_it_lacks(
    base: dict[str, tuple[int, bytes]], steps: list[dict[str, tuple[int, bytes]]]
) -> None:
    store = MemoryObjectStore()
    tip = _commit(store, base, None)
    head = tip
    for files in steps:
        head = _commit(store, files, head)
    sent = objects_since(store, head, tip)
    assert sent is not None
    # All the remote lacks when it holds the tip, and nothing the push does not reach.
    assert _reachable(store, head) - _reachable(store, tip) <= set(sent)
    assert set(sent) <= _reachable(store, head)
    assert len(sent) == len(set(sent))
    # dulwich's own walk, for the record: it never needs what this leaves out.
    walked = {oid for oid, _hint in MissingObjectFinder(store, haves=[tip], wants=[head])}
    assert walked - set(sent) <= _reachable(store, tip)


def test_anything_but_a_line_of_own_commits_is_left_to_the_walk() -> None:
    store = MemoryObjectStore()
    tip = _commit(store, {"a": (FILE, b"1")}, None)
    other = _commit(store, {"a": (FILE, b"2")}, None)
    head = _commit(store, {"a": (FILE, b"3")}, tip)
    assert objects_since(store, head, other) is None  # the tip is not behind it
    merge = Commit()
    merge.tree = store[head].tree
    merge.parents = [head, other]
    merge.author = merge.committer = b"t <t@example.com>"
    merge.author_time = merge.commit_time = merge.author_timezone = merge.commit_timezone = 0
    merge.message = b"merge"
    store.add_object(merge)
    assert objects_since(store, merge.id, tip) is None
    missing_tree = Commit()
    missing_tree.tree = ObjectID(b"1" * 40)
    missing_tree.parents = [tip]
    missing_tree.author = missing_tree.committer = b"t <t@example.com>"
    missing_tree.author_time = missing_tree.commit_time = 0
    missing_tree.author_timezone = missing_tree.commit_timezone = 0
    missing_tree.message = b"m"
    store.add_object(missing_tree)
    assert objects_since(store, missing_tree.id, tip) is None
