"""A procedural renderer of indoor rooms with exact per-pixel class, depth and normals.

A :class:`Scene` is a box-shaped room (floor, ceiling, four walls, with pictures on the walls)
holding boxes, spheres and vertical cylinders that rest on the floor, seen by a pinhole
:class:`Camera` at some pose inside the room. A vectorised numpy ray caster finds the nearest
surface under every pixel centre, which gives exact targets (:func:`trace`, :func:`render`):

* ``label``: the surface's class, one of :data:`CLASSES`;
* ``depth``: z-depth (distance along the optical axis) in metres, like NYUv2;
* ``normal``: the unit surface normal in the camera frame (x right, y down, z forward, the
  OpenCV convention), pointing out of the surface towards the camera (``n · ray < 0``).

:func:`render` also shades the image (Lambertian point light with shadows, a directional fill
light and ambient light); every surface gets a random colour pair from one distribution shared by
all classes and a random procedural texture (plain, stripes, checker or value noise), and pixel
noise is added, so colour alone does not give the class. With some probability an elliptic
"sensor dropout" region is invalid, as in NYUv2: label ``-1``, depth ``0``, normal the zero
vector. :func:`sample_scene` draws a random room, camera pose and contents.
:mod:`tasknorm.data.scenes` turns these into a dataset.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

CLASSES = ("floor", "wall", "ceiling", "box", "sphere", "cylinder", "picture")
FLOOR, WALL, CEILING, BOX, SPHERE, CYLINDER, PICTURE = range(len(CLASSES))
_EPS = 1e-9
_ROOM_LABELS = np.array([FLOOR, CEILING, WALL, WALL, WALL, WALL])  # surfaces 0-5


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in the room's world frame (y up; yaw 0 looks along +z).

    Args:
        position: optical centre (x, y, z) in metres.
        yaw: rotation about the world's up axis, radians.
        pitch: downward tilt of the optical axis, radians.
        roll: rotation about the optical axis, radians.
    """

    position: tuple[float, float, float]
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0

    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation; its columns are the camera's right, down and forward axes."""
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        forward = np.array([cp * np.sin(self.yaw), -sp, cp * np.cos(self.yaw)])
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        cr, sr = np.cos(self.roll), np.sin(self.roll)
        return np.stack([cr * right + sr * down, cr * down - sr * right, forward], axis=1)


@dataclass(frozen=True)
class Box:
    """A box with half extents ``half`` around ``centre``, turned by ``yaw`` radians about the up
    axis (right-hand rule: its x axis is ``(cos yaw, 0, -sin yaw)`` in the world)."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0
    label: ClassVar[int] = BOX

    def intersect(self, origins: np.ndarray, dirs: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entry distance (``inf`` on a miss), world normal and box-frame point of each ray."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        turn = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # box frame -> world
        o, d = (origins - self.centre) @ turn, _nonzero(dirs @ turn)
        half = np.array(self.half)
        near, far = (-half - o) / d, (half - o) / d
        t_in, t_out = np.minimum(near, far), np.maximum(near, far)
        axis = t_in.argmax(1)
        rows = np.arange(len(o))
        t = t_in[rows, axis]
        t = np.where((t <= t_out.min(1)) & (t > _EPS), t, np.inf)
        normal = np.zeros_like(o)
        normal[rows, axis] = -np.sign(d[rows, axis])
        return t, normal @ turn.T, o + np.nan_to_num(t, posinf=0)[:, None] * d


@dataclass(frozen=True)
class Sphere:
    """A sphere of ``radius`` around ``centre``."""

    centre: tuple[float, float, float]
    radius: float
    label: ClassVar[int] = SPHERE

    def intersect(self, origins: np.ndarray, dirs: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entry distance (``inf`` on a miss), world normal and centred point of each ray."""
        o = origins - self.centre
        a, b = (dirs * dirs).sum(1), (o * dirs).sum(1)
        disc = b * b - a * ((o * o).sum(1) - self.radius ** 2)
        t = (-b - np.sqrt(np.maximum(disc, 0))) / a
        t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
        point = o + np.nan_to_num(t, posinf=0)[:, None] * dirs
        return t, point / self.radius, point


@dataclass(frozen=True)
class Cylinder:
    """A closed cylinder with a vertical axis through ``centre``."""

    centre: tuple[float, float, float]
    radius: float
    half_height: float
    label: ClassVar[int] = CYLINDER

    def intersect(self, origins: np.ndarray, dirs: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entry distance (``inf`` on a miss), world normal and centred point of each ray."""
        o, d = origins - self.centre, _nonzero(dirs)
        a = d[:, 0] ** 2 + d[:, 2] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2]
        disc = b * b - a * (o[:, 0] ** 2 + o[:, 2] ** 2 - self.radius ** 2)
        side = (-b - np.sqrt(np.maximum(disc, 0))) / a
        side_ok = (disc >= 0) & (np.abs(o[:, 1] + side * d[:, 1]) <= self.half_height)
        caps = (np.array([[-1.0, 1.0]]) * self.half_height - o[:, 1:2]) / d[:, 1:2]
        cap_x, cap_z = o[:, :1] + caps * d[:, :1], o[:, 2:] + caps * d[:, 2:]
        caps_ok = cap_x ** 2 + cap_z ** 2 <= self.radius ** 2
        options = np.where(np.column_stack([side_ok, caps_ok]),
                           np.column_stack([side, caps]), np.inf)
        options[options <= _EPS] = np.inf
        which = options.argmin(1)
        t = options[np.arange(len(o)), which]
        point = o + np.nan_to_num(t, posinf=0)[:, None] * d
        normal = np.zeros_like(o)
        normal[:, [0, 2]] = point[:, [0, 2]] / self.radius
        normal[which > 0] = 0
        normal[which > 0, 1] = np.where(which[which > 0] == 1, -1.0, 1.0)
        return t, normal, point


@dataclass(frozen=True)
class Picture:
    """A picture on a wall: wall 0 is x = 0, 1 is x = X, 2 is z = 0, 3 is z = Z. ``centre`` and
    ``half`` are (along the wall, height) in metres; along the wall is z on walls 0-1, x on 2-3."""

    wall: int
    centre: tuple[float, float]
    half: tuple[float, float]


Primitive = Box | Sphere | Cylinder


@dataclass(frozen=True)
class Scene:
    """A room spanning ``[0, X] × [0, Y] × [0, Z]`` (``room = (X, Y, Z)``, metres, y up) with a
    camera inside, primitives and pictures."""

    room: tuple[float, float, float]
    camera: Camera
    objects: tuple[Primitive, ...] = ()
    pictures: tuple[Picture, ...] = ()


def trace(scene: Scene, height: int, width: int, fov: float = 60.0) -> dict[str, np.ndarray]:
    """Exact per-pixel geometry of ``scene``: ``"label"`` (H, W) int64 class, ``"depth"`` (H, W)
    z-depth in metres and ``"normal"`` (H, W, 3) unit camera-frame normals.

    Example:
        >>> scene = Scene(room=(4.0, 3.0, 4.0), camera=Camera((2.0, 1.5, 0.5)))
        >>> geometry = trace(scene, 24, 32)
        >>> float(geometry["depth"][12, 16]), CLASSES[geometry["label"][12, 16]]
        (3.5, 'wall')
    """
    hits = _cast(scene, *_camera_rays(scene.camera, height, width, fov))
    rotation = scene.camera.rotation()
    return {"label": hits["label"].reshape(height, width),
            "depth": hits["t"].reshape(height, width),
            "normal": (hits["normal"] @ rotation).reshape(height, width, 3)}


def render(scene: Scene, height: int, width: int, fov: float, rng: np.random.Generator,
           dropout: float = 0.0) -> dict[str, np.ndarray]:
    """Render ``scene`` with a random appearance drawn from ``rng``, as mtan NYUv2 arrays:
    ``image`` (H, W, 3) in [0, 1], ``label`` (H, W) with -1 ignore, ``depth`` (H, W, 1) with 0
    invalid, ``normal`` (H, W, 3) with zero vectors invalid; all float32.

    With probability ``dropout`` an elliptic region is invalid in all three targets.
    """
    origins, dirs = _camera_rays(scene.camera, height, width, fov)
    hits = _cast(scene, origins, dirs)
    image = _shade(scene, hits, origins + hits["t"][:, None] * dirs, rng)
    label, depth = hits["label"].astype(np.float32), hits["t"].astype(np.float32)
    normal = (hits["normal"] @ scene.camera.rotation()).astype(np.float32)
    if rng.random() < dropout:
        rows, cols = np.divmod(np.arange(height * width), width)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.05, 0.2, 2) * (height, width)
        invalid = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        label[invalid], depth[invalid], normal[invalid] = -1, 0, 0
    return {"image": image.reshape(height, width, 3), "label": label.reshape(height, width),
            "depth": depth.reshape(height, width, 1), "normal": normal.reshape(height, width, 3)}


def sample_scene(rng: np.random.Generator, max_objects: int = 8, fov: float = 60.0) -> Scene:
    """A random room, camera pose, primitives (in the horizontal field of view, none enclosing the
    camera) and 1-3 pictures."""
    room = (rng.uniform(3, 6), rng.uniform(2.4, 3.0), rng.uniform(3, 6))
    size = np.array(room)
    position = np.array([rng.uniform(0.3, room[0] - 0.3), rng.uniform(1.0, 1.8),
                         rng.uniform(0.3, room[2] - 0.3)])
    target = size / 2 + rng.uniform(-0.25, 0.25, 3) * size
    yaw = float(np.arctan2(target[0] - position[0], target[2] - position[2]))
    camera = Camera(tuple(position), yaw, float(np.radians(rng.uniform(-5, 30))),
                    float(np.radians(rng.uniform(-3, 3))))
    objects = []
    for _ in range(rng.integers(min(2, max_objects), max_objects + 1)):
        kind = rng.integers(3)
        if kind == 0:
            half = rng.uniform(0.15, 0.6, 3)
            shape, reach = (tuple(half), rng.uniform(0, np.pi)), np.hypot(half[0], half[2])
            lift = half[1]
        elif kind == 1:
            reach = lift = rng.uniform(0.12, 0.45)
            shape = (reach,)
        else:
            reach, lift = rng.uniform(0.08, 0.35), rng.uniform(0.2, 0.8)
            shape = (reach, lift)
        for _ in range(30):  # a spot in the horizontal field of view, inside the room
            angle = yaw + np.radians(rng.uniform(-0.6, 0.6) * fov)
            x, z = position[[0, 2]] + rng.uniform(0.7, 4) * np.array([np.sin(angle),
                                                                      np.cos(angle)])
            if reach < x < room[0] - reach and reach < z < room[2] - reach and \
                    np.hypot(x - position[0], z - position[2]) > reach + 0.4:
                objects.append((Box, Sphere, Cylinder)[kind]((x, lift, z), *shape))
                break
    pictures = []
    for _ in range(rng.integers(1, 4)):
        wall = int(rng.integers(4))
        length = room[2] if wall < 2 else room[0]
        half = (rng.uniform(0.25, 0.7), rng.uniform(0.2, 0.5))
        pictures.append(Picture(wall, (rng.uniform(half[0] + 0.1, length - half[0] - 0.1),
                                       rng.uniform(1.0, room[1] - half[1] - 0.1)), half))
    return Scene(room, camera, tuple(objects), tuple(pictures))


def _nonzero(v: np.ndarray) -> np.ndarray:
    """``v`` with exact zeros nudged so that divisions by it stay finite."""
    return np.where(v == 0, 1e-12, v)


def _camera_rays(camera: Camera, height: int, width: int, fov: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """World origins and directions of the rays through the pixel centres, scaled so that the
    distance along a ray equals the z-depth."""
    focal = width / 2 / np.tan(np.radians(fov) / 2)
    rows, cols = np.divmod(np.arange(height * width), width)
    rays = np.column_stack([(cols + 0.5 - width / 2) / focal, (rows + 0.5 - height / 2) / focal,
                            np.ones(height * width)])
    dirs = rays @ camera.rotation().T
    return np.broadcast_to(np.array(camera.position, float), dirs.shape), dirs


def _cast(scene: Scene, origins: np.ndarray, dirs: np.ndarray) -> dict[str, np.ndarray]:
    """Nearest hit of each ray from inside the room: distance ``t``, world ``normal``, class
    ``label``, ``surface`` index (room 0-5, pictures, then objects) and texture-frame ``point``."""
    rows = np.arange(len(dirs))
    d = _nonzero(dirs)
    exits = (np.where(d > 0, scene.room, 0.0) - origins) / d
    axis = exits.argmin(1)
    positive = d[rows, axis] > 0
    t = exits[rows, axis]
    surface = np.array([[2, 3], [0, 1], [4, 5]])[axis, positive.astype(int)]
    normal = np.zeros_like(d)
    normal[rows, axis] = np.where(positive, -1.0, 1.0)
    point = origins + t[:, None] * dirs
    label = _ROOM_LABELS[surface]
    for k, picture in enumerate(scene.pictures):
        along = point[:, 2] if picture.wall < 2 else point[:, 0]
        inside = (np.abs(along - picture.centre[0]) <= picture.half[0]) & \
            (np.abs(point[:, 1] - picture.centre[1]) <= picture.half[1])
        on = (surface == picture.wall + 2) & inside
        surface[on], label[on] = 6 + k, PICTURE
    first = 6 + len(scene.pictures)
    for k, obj in enumerate(scene.objects):
        t_obj, n_obj, p_obj = obj.intersect(origins, dirs)
        closer = t_obj < t
        t[closer], normal[closer], point[closer] = t_obj[closer], n_obj[closer], p_obj[closer]
        surface[closer], label[closer] = first + k, obj.label
    return {"t": t, "normal": normal, "label": label, "surface": surface, "point": point}


def _shade(scene: Scene, hits: dict[str, np.ndarray], points: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Textured Lambertian image (N, 3) in [0, 1]: a point light with object shadows, a
    directional fill light, ambient light, exposure, gamma and Gaussian pixel noise."""
    surfaces = 6 + len(scene.pictures) + len(scene.objects)
    materials = [_material(rng, 6 <= s < 6 + len(scene.pictures)) for s in range(surfaces)]
    albedo = np.empty_like(points)
    for s in np.unique(hits["surface"]):
        mask = hits["surface"] == s
        albedo[mask] = materials[s](hits["point"][mask])
    room = np.array(scene.room)
    light = room * [rng.uniform(0.2, 0.8), 1, rng.uniform(0.2, 0.8)] - [0, rng.uniform(0.2, 0.5), 0]
    normal = hits["normal"]
    starts = points + 1e-6 * normal
    to_light = light - starts
    distance = np.linalg.norm(to_light, axis=1)
    lit = np.ones(len(points), bool)
    for obj in scene.objects:
        lit &= obj.intersect(starts, to_light)[0] >= 1
    direct = np.clip((normal * to_light).sum(1) / distance, 0, None) * lit
    fill = rng.normal(size=3) + np.array([0.0, 2.0, 0.0])
    fill /= np.linalg.norm(fill)
    shading = (rng.uniform(0.1, 0.3) + rng.uniform(0.8, 1.2) * direct / (1 + 0.1 * distance ** 2)
               + rng.uniform(0, 0.4) * np.clip(normal @ fill, 0, None))
    radiance = albedo * shading[:, None]
    exposed = np.clip(radiance * rng.uniform(0.8, 1.0) / np.quantile(radiance, 0.99), 0, 1)
    noisy = exposed ** (1 / 2.2) + rng.normal(0, rng.uniform(0.005, 0.03), exposed.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)


def _material(rng: np.random.Generator, picture: bool) -> Callable[[np.ndarray], np.ndarray]:
    """A random surface albedo as a function of texture-frame points (N, 3) -> (N, 3): two
    colours mixed by a plain, stripe, checker or value-noise pattern (never plain for pictures)."""

    def colour() -> np.ndarray:
        value, saturation = rng.uniform(0.25, 1.0), rng.uniform(0, 0.8)
        return value * (1 - saturation + saturation * rng.random(3))

    first = colour()
    second = colour() if picture else np.clip(first * rng.uniform(0.3, 1.3)
                                              + rng.normal(0, 0.1, 3), 0, 1)
    pattern = int(rng.integers(1 if picture else 0, 4))
    scale = rng.uniform(0.05, 0.4)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    offset = rng.uniform(0, 1, 3)
    lattice = rng.random((8, 8, 8))

    def weight(points: np.ndarray) -> np.ndarray:
        q = points / scale + offset
        if pattern == 0:
            return np.zeros(len(q))
        if pattern == 1:
            return (np.sin(2 * np.pi * q @ direction) > 0).astype(float)
        if pattern == 2:
            return np.floor(q).sum(1) % 2
        cell = np.floor(q).astype(int)
        f = q - cell
        f = f * f * (3 - 2 * f)
        total = np.zeros(len(q))
        for corner in itertools.product((0, 1), repeat=3):
            idx = (cell + corner) % 8
            total += np.prod(np.where(corner, f, 1 - f), axis=1) * lattice[tuple(idx.T)]
        return total

    return lambda points: first + weight(points)[:, None] * (second - first)
