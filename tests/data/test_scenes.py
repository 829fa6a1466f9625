import json

import numpy as np
import pytest
import torch

from tasknorm.data import scenes
from tasknorm.data.nyuv2 import NYUv2
from tasknorm.data.scene_render import (
    CLASSES,
    Box,
    Camera,
    Picture,
    Scene,
    Sphere,
    render,
    sample_scene,
    trace,
)
from tasknorm.data.scenes import (
    RenderedScenesDataModule,
    ScenesSpec,
    is_complete,
    render_scenes,
    scenes_root,
)

H, W, FOV = 24, 32, 60.0
TINY = ScenesSpec(sizes=(4, 2), height=H, width=W)
FLOOR, WALL, CEILING, BOX, SPHERE, CYLINDER, PICTURE = range(7)


def camera_rays(height=H, width=W, fov=FOV):
    """Camera-frame rays (H*W, 3) through the pixel centres, with z = 1."""
    focal = width / 2 / np.tan(np.radians(fov) / 2)
    rows, cols = np.mgrid[:height, :width]
    x = (cols.ravel() + 0.5 - width / 2) / focal
    y = (rows.ravel() + 0.5 - height / 2) / focal
    return np.column_stack([x, y, np.ones_like(x)])


def level_axes(pitch):
    """World right, down and forward axes of a camera with yaw 0 (looking along +z), tilted
    down by ``pitch``, in the y-up world."""
    c, s = np.cos(pitch), np.sin(pitch)
    return np.array([-1.0, 0, 0]), np.array([0, -c, -s]), np.array([0, -s, c])


def test_spec_validates_and_hashes():
    assert ScenesSpec().key() == ScenesSpec().key() != ScenesSpec(seed=1).key()
    with pytest.raises(ValueError, match="sizes"):
        ScenesSpec(sizes=(4, 0))
    with pytest.raises(ValueError, match="seed"):
        ScenesSpec(seed=-1)


def test_camera_rotation_has_the_documented_axes():
    right, down, forward = level_axes(0.3)
    assert np.allclose(Camera((0, 0, 0), 0.0, 0.3).rotation(), np.stack([right, down, forward], 1))
    rotation = Camera((0, 0, 0), yaw=1.1, pitch=0.2, roll=0.05).rotation()
    assert np.allclose(rotation.T @ rotation, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1)
    assert np.allclose(rotation[:, 2], [np.cos(0.2) * np.sin(1.1), -np.sin(0.2),
                                        np.cos(0.2) * np.cos(1.1)])


def test_empty_room_matches_analytic_plane_intersections():
    """Room only (plus one picture): every pixel's depth, class and normal from the six planes,
    computed here in world coordinates with explicitly written camera axes."""
    room, position, pitch = np.array([4.0, 2.6, 5.0]), np.array([1.5, 1.4, 0.7]), 0.05
    picture = Picture(wall=3, centre=(2.0, 1.5), half=(0.6, 0.4))  # on the far wall z = Z
    scene = Scene(tuple(room), Camera(tuple(position), 0.0, pitch), pictures=(picture,))
    geometry = trace(scene, H, W, FOV)

    right, down, forward = level_axes(pitch)
    rays = camera_rays()
    dirs = rays @ np.stack([right, down, forward])
    with np.errstate(divide="ignore"):
        t_low, t_high = -position / dirs, (room - position) / dirs
    t_planes = np.where(t_low > 0, t_low, np.inf), np.where(t_high > 0, t_high, np.inf)
    t_all = np.concatenate(t_planes, axis=1)  # x=0, y=0, z=0, x=X, y=Y, z=Z
    nearest = t_all.argmin(1)
    assert np.allclose(geometry["depth"].ravel(), t_all.min(1), rtol=1e-12)

    classes = np.array([WALL, FLOOR, WALL, WALL, CEILING, WALL])[nearest]
    hit = position + t_all.min(1)[:, None] * dirs
    on_picture = (nearest == 5) & (np.abs(hit[:, 0] - 2.0) <= 0.6) \
        & (np.abs(hit[:, 1] - 1.5) <= 0.4)
    classes[on_picture] = PICTURE
    assert np.array_equal(geometry["label"].ravel(), classes)
    assert set(np.unique(classes)) == {FLOOR, WALL, CEILING, PICTURE}

    inward = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]])
    expected = inward[nearest] @ np.stack([right, down, forward], 1)
    assert np.allclose(geometry["normal"].reshape(-1, 3), expected, atol=1e-12)
    floor = nearest == 1
    floor_normal = [0, -np.cos(pitch), -np.sin(pitch)]
    assert np.allclose(geometry["normal"].reshape(-1, 3)[floor], floor_normal)


@pytest.mark.parametrize(("yaw", "pitch", "roll"), [(0.7, 0.1, 0.0), (-2.0, 0.45, 0.04)])
def test_floor_depth_and_normal_are_those_of_the_floor_plane(yaw, pitch, roll):
    """In the camera frame the floor is the plane up · P = -h with up = R^T (0, 1, 0):
    (-sin r cos p, -cos r cos p, -sin p) for roll r and pitch p, whatever the yaw."""
    height = 1.3
    scene = Scene((6.0, 2.8, 6.0), Camera((3.0, height, 3.0), yaw, pitch, roll))
    geometry = trace(scene, H, W, FOV)
    floor = geometry["label"].ravel() == FLOOR
    assert floor.sum() > 50
    up = np.array([-np.sin(roll) * np.cos(pitch), -np.cos(roll) * np.cos(pitch), -np.sin(pitch)])
    rays = camera_rays()[floor]
    assert np.allclose(geometry["depth"].ravel()[floor], -height / (rays @ up), rtol=1e-12)
    assert np.allclose(geometry["normal"].reshape(-1, 3)[floor], up)


def test_sphere_pixels_depths_and_normals_are_exact():
    """A sphere straight ahead: its pixels are the rays that meet it, at the near root, with
    normal (hit - centre) / radius; all computed here in the camera frame."""
    centre_world, radius, pitch = np.array([2.0, 0.6, 3.0]), 0.6, 0.2
    position = np.array([2.0, 1.5, 0.5])
    scene = Scene((4.0, 2.6, 5.0), Camera(tuple(position), 0.0, pitch),
                  objects=(Sphere(tuple(centre_world), radius),))
    geometry = trace(scene, H, W, FOV)
    rotation = np.stack(level_axes(pitch), 1)
    centre = (centre_world - position) @ rotation
    rays = camera_rays()
    a, b = (rays * rays).sum(1), (rays @ centre)
    disc = b * b - a * (centre @ centre - radius ** 2)
    hits = disc >= 0
    assert np.array_equal(geometry["label"].ravel() == SPHERE, hits) and hits.sum() > 20
    depth = (b[hits] - np.sqrt(disc[hits])) / a[hits]
    assert np.allclose(geometry["depth"].ravel()[hits], depth, rtol=1e-12)
    points = depth[:, None] * rays[hits]
    assert np.allclose(geometry["normal"].reshape(-1, 3)[hits], (points - centre) / radius)


def signed_distances(obj, points):
    """Signed distance (negative inside) from ``points`` (..., 3) to a primitive."""
    p = points - np.array(obj.centre)
    if isinstance(obj, Sphere):
        return np.linalg.norm(p, axis=-1) - obj.radius
    if isinstance(obj, Box):
        c, s = np.cos(obj.yaw), np.sin(obj.yaw)
        local = np.stack([p @ [c, 0, -s], p[..., 1], p @ [s, 0, c]], -1)
        q = np.abs(local) - obj.half
    else:
        q = np.stack([np.hypot(p[..., 0], p[..., 2]) - obj.radius,
                      np.abs(p[..., 1]) - obj.half_height], -1)
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def numeric_normals(obj, points, step=1e-6):
    """Central-difference gradient of the signed distance: the outward unit normal."""
    offsets = np.eye(3) * step
    return np.stack([(signed_distances(obj, points + e) - signed_distances(obj, points - e))
                     / (2 * step) for e in offsets], -1)


def test_sampled_scenes_hit_the_nearest_surface_exactly():
    """Random scenes: each object pixel lies on an object of its class with that object's
    normal, room pixels lie on the room's boundary, and nothing lies between camera and hit."""
    for index in range(6):
        scene = sample_scene(np.random.default_rng([7, index]))
        geometry = trace(scene, H, W, FOV)
        rotation = scene.camera.rotation()
        dirs = camera_rays() @ rotation.T
        depth, label = geometry["depth"].ravel(), geometry["label"].ravel()
        normal = geometry["normal"].reshape(-1, 3) @ rotation.T
        points = np.array(scene.camera.position) + depth[:, None] * dirs
        room = np.array(scene.room)
        on_room = np.minimum(np.abs(points), np.abs(points - room)).min(1)
        assert np.all(on_room[label <= CEILING] < 1e-9)
        assert np.all(on_room[label == PICTURE] < 1e-9)
        for obj in scene.objects:
            distances = signed_distances(obj, points)
            mine = (label == obj.label) & (np.abs(distances) < 1e-9)
            assert np.allclose(normal[mine], numeric_normals(obj, points[mine]), atol=1e-4)
        for cls in (BOX, SPHERE, CYLINDER):
            mine = label == cls
            closest = [np.abs(signed_distances(o, points[mine])) for o in scene.objects
                       if o.label == cls]
            assert not mine.any() or np.min(closest, axis=0).max() < 1e-9
        before = np.linspace(0.01, 0.999, 25)[:, None, None] * (points - scene.camera.position)
        for obj in scene.objects:
            assert signed_distances(obj, scene.camera.position + before).min() > 0


def test_rendered_arrays_use_the_mtan_encodings():
    for index in range(6):
        rng = np.random.default_rng([3, index])
        arrays = render(sample_scene(rng), H, W, FOV, rng, dropout=1.0)
        assert {k: (a.shape, a.dtype) for k, a in arrays.items()} == {
            "image": ((H, W, 3), np.float32), "label": ((H, W), np.float32),
            "depth": ((H, W, 1), np.float32), "normal": ((H, W, 3), np.float32)}
        image, label = arrays["image"], arrays["label"]
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.05
        assert set(np.unique(label)) <= set(range(-1, len(CLASSES)))
        invalid = label == -1
        assert 0 < invalid.sum() < H * W
        assert np.array_equal(arrays["depth"][..., 0] == 0, invalid)
        assert np.array_equal(np.abs(arrays["normal"]).sum(-1) == 0, invalid)
        valid_normals = arrays["normal"][~invalid]
        assert np.allclose(np.linalg.norm(valid_normals, axis=1), 1, atol=1e-6)
        rays = camera_rays()[~invalid.ravel()]
        assert np.all((valid_normals * rays).sum(1) < 0)  # facing the camera


def test_pixel_colour_does_not_determine_the_class():
    """Shared colour distributions and textures: across rendered images, every class covers a
    wide range of colours, and pixels of different classes overlap in colour."""
    images, labels = [], []
    for index in range(30):
        rng = np.random.default_rng([5, index])
        arrays = render(sample_scene(rng), H, W, FOV, rng)
        images.append(arrays["image"].reshape(-1, 3))
        labels.append(arrays["label"].ravel())
    image, label = np.concatenate(images), np.concatenate(labels)
    quantised = np.floor(image * 4).astype(int) @ [16, 4, 1]  # 64 colour bins
    for cls in (FLOOR, WALL, BOX, SPHERE, CYLINDER):
        assert len(np.unique(quantised[label == cls])) >= 10
    shared = set(quantised[label == FLOOR]) & set(quantised[label == BOX]) \
        & set(quantised[label == WALL])
    assert len(shared) >= 5


def test_render_scenes_is_deterministic_and_seeded(tmp_path):
    first = render_scenes(tmp_path / "a", TINY)
    second = render_scenes(tmp_path / "b", TINY)
    other = render_scenes(tmp_path / "c", ScenesSpec(sizes=(4, 2), height=H, width=W, seed=1))
    files = sorted(p.relative_to(first) for p in first.rglob("*.npy"))
    assert len(files) == 4 * (4 + 2)
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert (first / "scenes.json").read_bytes() == (second / "scenes.json").read_bytes()
    assert not any(np.array_equal(np.load(first / f), np.load(other / f)) for f in files
                   if f.parent.name == "image")
    description = json.loads((first / "scenes.json").read_text())
    assert description["classes"] == list(CLASSES) and description["splits"] == {"train": 4,
                                                                                  "val": 2}
    assert is_complete(first, TINY) and not is_complete(first, ScenesSpec(sizes=(4, 3)))
    with pytest.raises(FileExistsError, match="already exists"):
        render_scenes(first, TINY)


def test_nyuv2_loader_reads_the_rendered_files(tmp_path):
    root = render_scenes(tmp_path / "scenes", ScenesSpec(sizes=(3, 2), height=H, width=W,
                                                         dropout=1.0))
    for split, folder, size in (("train", "train", 3), ("test", "val", 2)):
        dataset = NYUv2(root, split, num_classes=len(CLASSES))
        assert len(dataset) == size
        for i in range(size):
            sample = dataset[i]
            raw = {k: np.load(root / folder / k / f"{i}.npy") for k in scenes.KINDS}
            assert torch.equal(sample["image"], torch.from_numpy(raw["image"]).permute(2, 0, 1))
            assert sample["segmentation"].dtype == torch.int64
            assert torch.equal(sample["segmentation"], torch.from_numpy(raw["label"]).long())
            invalid = torch.from_numpy(raw["label"] == -1)
            assert invalid.any()
            assert torch.equal(sample["depth"][0].isnan(), invalid)
            depth = torch.from_numpy(raw["depth"][..., 0])
            assert torch.equal(sample["depth"][0][~invalid], depth[~invalid])
            assert torch.equal(sample["normals"], torch.from_numpy(raw["normal"]).permute(2, 0, 1))


def test_cache_renders_once_and_repairs_damage(tmp_path, monkeypatch):
    calls = []
    real = scenes.render_scenes
    monkeypatch.setattr(scenes, "render_scenes", lambda *a: calls.append(a) or real(*a))
    root = scenes_root(TINY, tmp_path)
    assert root == tmp_path / f"scenes-{TINY.key()}" and len(calls) == 1
    reference = np.load(root / "train/depth/1.npy")
    assert scenes_root(TINY, tmp_path) == root and len(calls) == 1

    path = root / "train/depth/1.npy"
    path.write_bytes(path.read_bytes()[:-8])  # truncated file
    assert scenes_root(TINY, tmp_path) == root and len(calls) == 2
    assert np.array_equal(np.load(path), reference)
    (root / "val/normal/1.npy").unlink()
    assert scenes_root(TINY, tmp_path) == root and len(calls) == 3
    assert [p.name for p in tmp_path.iterdir()] == [root.name]


def test_interrupted_render_leaves_nothing(tmp_path, monkeypatch):
    real, calls = scenes.render, []

    def failing(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scenes, "render", failing)
    with pytest.raises(KeyboardInterrupt):
        scenes_root(TINY, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_datamodule_renders_and_serves_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKNORM_CACHE", str(tmp_path))
    module = RenderedScenesDataModule(sizes=(10, 3), height=H, width=W, batch_size=4)
    assert [t.name for t in module.tasks] == ["segmentation", "depth", "normals"]
    assert module.tasks[0].out_channels == len(CLASSES)
    module.prepare_data()
    assert is_complete(tmp_path / f"scenes-{module.spec.key()}", module.spec)
    module.setup("fit")
    assert [len(module.splits[s]) for s in ("train", "val", "test")] == [9, 1, 3]
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 3, H, W)
    assert batch["segmentation"].shape == (4, H, W) and batch["segmentation"].max() < 7
    assert batch["depth"].shape == (4, 1, H, W) and batch["normals"].shape == (4, 3, H, W)
    augmented = RenderedScenesDataModule(sizes=(10, 3), height=H, width=W, batch_size=4,
                                         augment=True, tasks=("depth",))
    augmented.prepare_data()  # the same spec: served from the cache
    augmented.setup("fit")
    assert [t.name for t in augmented.tasks] == ["depth"]
    assert set(next(iter(augmented.train_dataloader()))) == {"image", "depth"}
    assert [p.name for p in tmp_path.iterdir()] == [f"scenes-{module.spec.key()}"]
    assert RenderedScenesDataModule(seed=1).spec == ScenesSpec()
    assert RenderedScenesDataModule(render_seed=1).spec == ScenesSpec(seed=1)
