"""The tabletop gymnasium env: one MuJoCo scene per task, a mocap-driven two-finger gripper.

Observation: {"image": uint8 (n_cameras, H, W, 3), "proprio": float32 (4,)} where proprio is the
end-effector point (between the fingertips; metres, world frame) and the gripper opening (0 closed
.. 1 fully open, as in the Meta-World suite).
Action: float32 (4,) in [-1, 1]: end-effector delta xyz, scaled by MAX_STEP metres per step, and a
gripper command (-1 fully open ... +1 fully closed; the finger position target is linear in it).
Control runs at 20 Hz (20 physics substeps of 2.5 ms). The episode terminates (terminated=True) on
success; reward is 1.0 on the success step, else 0.0; the time limit comes from the registration.
Grasping is physical: the fingers hold objects only through contact and friction.
"""

from __future__ import annotations

import atexit
import math
import weakref
import zlib
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np

from vla_prefix.errors import ConfigError
from vla_prefix.sim.render import make_renderer, render

from .spec import COLORS, DISTRACTOR_COLORS, GRASPABLE, ObjectSpec, TabletopTaskSpec

ASSET = Path(__file__).parent / "assets" / "tabletop.xml"

CONTROL_HZ = 20
SUBSTEPS = 20  # x 2.5 ms timestep = 50 ms per env step
MAX_STEP = 0.02  # metres of end-effector motion per unit action per step
FINGER_OPEN = 0.045  # finger offset from the centre line when fully open (metres)

# Where the mocap target may go (end-effector point, metres): keeps the fingertips above the table.
EE_LOW = np.array([-0.3, -0.25, 0.012])
EE_HIGH = np.array([0.3, 0.25, 0.3])
# Where objects are placed (centres, metres) and where the gripper starts.
TABLE_REGION = (np.array([-0.18, -0.14]), np.array([0.18, 0.14]))
START_LOW = np.array([-0.15, -0.12, 0.14])
START_HIGH = np.array([0.15, 0.08, 0.22])
DEFAULT_CAMERAS = ("scene", "wrist")  # the fixed view plus the eye-in-hand view (precise grasps)
MAX_YAW = 0.35  # cubes start with a yaw in [-MAX_YAW, MAX_YAW] rad
ENGAGE_MOVE = 0.02  # an object lifted or pushed this far (metres) counts as engaged
ENGAGE_NEAR = 0.03  # ... else the one the end effector came this close to in xy

# Object sizes (metres).
CUBE_HALF = 0.02
BALL_RADIUS = 0.02
BOWL_INNER = 0.05  # inner radius of the bowl wall
BOWL_WALL_HEIGHT = 0.035
BOWL_WALL = 0.006
BOWL_FLOOR = 0.005
BOWL_SEGMENTS = 12
ZONE_RADIUS = 0.05
# Footprint radius of each kind, for keeping objects apart when drawing a layout.
FOOTPRINT = {"cube": 0.03, "ball": 0.025, "bowl": BOWL_INNER + BOWL_WALL, "zone": ZONE_RADIUS}
CLEARANCE = 0.04  # free space between footprints (room for the open fingers)

BASE_BODIES = ("world", "mocap", "hand", "finger_l", "finger_r")


# Renderers still open. MuJoCo's EGL backend terminates the display in an atexit hook registered
# with the first GL context; a renderer closed after that prints EGLError noise. We close ours in
# a hook registered after that one (atexit runs hooks last-in first-out).
_OPEN_RENDERERS: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_open_renderers() -> None:
    for r in list(_OPEN_RENDERERS):
        r.close()


def _new_renderer(model: mujoco.MjModel, size: int) -> mujoco.Renderer:
    global _exit_hook_registered
    renderer = make_renderer(model, size, size)
    _OPEN_RENDERERS.add(renderer)
    if not _exit_hook_registered:
        atexit.register(_close_open_renderers)
        _exit_hook_registered = True
    return renderer


def _bowl_vertices() -> list[float]:
    """Flat xyz list: per wall segment, outer bottom/top, inner top/bottom; then the floor centre."""
    outer, inner = BOWL_INNER + BOWL_WALL, BOWL_INNER
    vert = []
    for i in range(BOWL_SEGMENTS):
        c, s = math.cos(2 * math.pi * i / BOWL_SEGMENTS), math.sin(2 * math.pi * i / BOWL_SEGMENTS)
        vert += [outer * c, outer * s, 0.0, outer * c, outer * s, BOWL_WALL_HEIGHT,
                 inner * c, inner * s, BOWL_WALL_HEIGHT, inner * c, inner * s, BOWL_FLOOR]
    return vert + [0.0, 0.0, BOWL_FLOOR]


def _bowl_faces() -> list[int]:
    """Triangles (counter-clockwise seen from outside): outer wall, rim, inner wall, floor."""
    n, centre = BOWL_SEGMENTS, 4 * BOWL_SEGMENTS
    faces = []
    for i in range(n):
        j = (i + 1) % n
        ob, ot, it, ib = 4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3
        ob2, ot2, it2, ib2 = 4 * j, 4 * j + 1, 4 * j + 2, 4 * j + 3
        faces += [ob, ob2, ot2, ob, ot2, ot]  # outer wall
        faces += [ot, ot2, it2, ot, it2, it]  # rim
        faces += [it, it2, ib2, it, ib2, ib]  # inner wall
        faces += [centre, ib, ib2]  # floor
    return faces


def _add_object(spec: mujoco.MjSpec, obj: ObjectSpec) -> None:
    """Add one object body (named `obj.name`) with its geoms (`<name>/<i>`) to the spec."""
    rgba = list(COLORS[obj.color] if obj.color else COLORS["grey"])
    box, sphere, cyl = mujoco.mjtGeom.mjGEOM_BOX, mujoco.mjtGeom.mjGEOM_SPHERE, mujoco.mjtGeom.mjGEOM_CYLINDER
    if obj.kind in GRASPABLE:
        body = spec.worldbody.add_body(name=obj.name, pos=[0, 0, 0.1])
        body.add_freejoint(name=obj.name)
        if obj.kind == "cube":
            body.add_geom(name=f"{obj.name}/0", type=box, size=[CUBE_HALF] * 3, rgba=rgba, mass=0.05, condim=4)
        else:
            body.add_geom(name=f"{obj.name}/0", type=sphere, size=[BALL_RADIUS, 0, 0], rgba=rgba, mass=0.04,
                          condim=6, friction=[0.5, 0.005, 0.002])
    elif obj.kind == "bowl":  # static: a mocap body, moved per reset
        # Seen: one mesh (one draw call). Felt: a floor and wall boxes in geom group 3 (not rendered).
        body = spec.worldbody.add_body(name=obj.name, mocap=True)
        spec.add_mesh(name=f"{obj.name}/mesh", uservert=_bowl_vertices(), userface=_bowl_faces(),
                      inertia=mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL)
        body.add_geom(name=f"{obj.name}/0", type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"{obj.name}/mesh",
                      rgba=rgba, contype=0, conaffinity=0, mass=0.1)
        body.add_geom(name=f"{obj.name}/1", type=cyl, size=[BOWL_INNER + BOWL_WALL, BOWL_FLOOR / 2, 0],
                      pos=[0, 0, BOWL_FLOOR / 2], group=3)
        r = BOWL_INNER + BOWL_WALL / 2
        half_len = r * math.tan(math.pi / BOWL_SEGMENTS) + BOWL_WALL / 2
        for i in range(BOWL_SEGMENTS):
            a = 2 * math.pi * i / BOWL_SEGMENTS
            body.add_geom(name=f"{obj.name}/{i + 2}", type=box, size=[BOWL_WALL / 2, half_len, BOWL_WALL_HEIGHT / 2],
                          pos=[r * math.cos(a), r * math.sin(a), BOWL_WALL_HEIGHT / 2],
                          quat=[math.cos(a / 2), 0, 0, math.sin(a / 2)], group=3)
    else:  # zone: a flat patch, seen but not felt
        body = spec.worldbody.add_body(name=obj.name, mocap=True)
        body.add_geom(name=f"{obj.name}/0", type=cyl, size=[ZONE_RADIUS, 0.0015, 0], pos=[0, 0, 0.0015],
                      rgba=rgba, contype=0, conaffinity=0)


def build_spec(objects: tuple[ObjectSpec, ...]) -> mujoco.MjSpec:
    """The base scene (assets/tabletop.xml) plus `objects`, as an editable MjSpec."""
    spec = mujoco.MjSpec.from_file(str(ASSET))
    for obj in objects:
        if obj.name in BASE_BODIES or obj.name == "gripper":
            raise ConfigError(f"object name {obj.name!r} is reserved; use another name")
        _add_object(spec, obj)
    return spec


def build_model(objects: tuple[ObjectSpec, ...]) -> mujoco.MjModel:
    """Compile the base scene plus `objects`."""
    return build_spec(objects).compile()


class TabletopEnv(gym.Env):
    """One tabletop task (see the module docstring for the interface).

    Privileged helpers for success checks and experts: `ee_pos`, `ee_target`, `gripper_opening`, `pos(name)`,
    `touching(a, b)`, `color(name)`, `kind(name)`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        task: TabletopTaskSpec,
        image_size: int = 64,
        cameras: tuple[str, ...] | list[str] = DEFAULT_CAMERAS,
        render_mode: str | None = None,
        render_size: int | None = None,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode {render_mode!r} is not supported; use None or 'rgb_array'")
        if isinstance(cameras, str):
            cameras = (cameras,)
        cameras = tuple(cameras)
        if not cameras or any(c not in ("scene", "wrist") for c in cameras):
            raise ConfigError(f"cameras {cameras!r}: choose one or more of ('scene', 'wrist')")
        if int(image_size) < 8:
            raise ConfigError(f"image_size {image_size} is too small; use >= 8 (default 64)")
        self.task = task
        self.image_size = int(image_size)
        self.cameras = cameras
        self.render_mode = render_mode
        self.render_size = int(render_size or image_size)

        self.model = build_model(task.objects)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._mocap = m.body("mocap").mocapid[0]
        self._hand_qpos = m.jnt_qposadr[m.joint("hand").id]
        self._finger_qpos = [m.jnt_qposadr[m.joint(f).id] for f in ("finger_l", "finger_r")]
        self._ee_site = m.site("ee").id
        self._ee_offset = -m.site_pos[self._ee_site].copy()  # hand origin = ee point + offset
        self._objects = {o.name: o for o in task.objects}
        self._body = {o.name: m.body(o.name).id for o in task.objects}
        self._geoms = {o.name: np.flatnonzero(m.geom_bodyid == self._body[o.name]) for o in task.objects}
        self._geoms["gripper"] = np.array([m.geom(g).id for g in ("palm", "finger_l", "finger_r")])
        self._colors: dict[str, str] = {}
        # failure analysis (engaged_object): per graspable object, since reset
        self._graspable = [o.name for o in task.objects if o.kind in GRASPABLE]
        self._graspable_body = np.array([self._body[n] for n in self._graspable], dtype=int)
        self._start_pos = np.zeros((len(self._graspable), 3))
        self._max_lift = np.zeros(len(self._graspable))  # metres above the start height
        self._max_push = np.zeros(len(self._graspable))  # metres moved in xy
        self._min_xy_dist = np.full(len(self._graspable), np.inf)  # closest end-effector approach in xy

        n = len(cameras)
        s = self.image_size
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (n, s, s, 3), np.uint8),
                "proprio": gym.spaces.Box(
                    np.array([*EE_LOW[:2] - 0.1, -0.05, 0.0], np.float32),
                    np.array([*EE_HIGH[:2] + 0.1, EE_HIGH[2] + 0.1, 1.0], np.float32),
                    dtype=np.float32,
                ),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._renderers: dict[int, mujoco.Renderer] = {}  # by image size
        self._renderer = self._get_renderer(s)

    # ----------------------------------------------------------------- privileged state
    @property
    def ee_pos(self) -> np.ndarray:
        """(3,) end-effector point (between the fingertips), metres."""
        return self.data.site_xpos[self._ee_site].copy()

    @property
    def ee_target(self) -> np.ndarray:
        """(3,) commanded end-effector point (the mocap target the hand is welded to), metres."""
        return self.data.mocap_pos[self._mocap] - self._ee_offset

    @property
    def gripper_opening(self) -> float:
        """Gap between the fingers, metres (0 closed, 2 * FINGER_OPEN open)."""
        return float(sum(self.data.qpos[a] for a in self._finger_qpos))

    def pos(self, name: str) -> np.ndarray:
        """(3,) world position of object `name` (body origin: centre of a cube/ball, floor of a bowl/zone)."""
        return self.data.xpos[self._body[name]].copy()

    def kind(self, name: str) -> str:
        return self._objects[name].kind

    def color(self, name: str) -> str:
        """The object's colour this episode (distractors change colour per seed)."""
        return self._colors[name]

    def engaged_object(self) -> str:
        """Which object the gripper went for this episode, for failure analysis (not for success).

        The graspable object lifted highest (> ENGAGE_MOVE), else the one pushed farthest, else the one
        the end effector came nearest to in xy (< ENGAGE_NEAR), all since reset; else "none". Named
        objects are given by role ("target"); distractors as "distractor <colour> <kind>".
        """
        if not self._graspable:
            return "none"
        for moved in (self._max_lift, self._max_push):
            if moved.max() > ENGAGE_MOVE:
                return self._object_label(self._graspable[int(moved.argmax())])
        i = int(self._min_xy_dist.argmin())
        return self._object_label(self._graspable[i]) if self._min_xy_dist[i] < ENGAGE_NEAR else "none"

    def _object_label(self, name: str) -> str:
        spec = self._objects[name]
        return name if spec.color is not None else f"distractor {self.color(name)} {spec.kind}"

    def _track_objects(self) -> None:
        pos = self.data.xpos[self._graspable_body]  # (k, 3)
        np.maximum(self._max_lift, pos[:, 2] - self._start_pos[:, 2], out=self._max_lift)
        np.maximum(self._max_push, np.linalg.norm(pos[:, :2] - self._start_pos[:, :2], axis=1), out=self._max_push)
        ee_xy = self.data.site_xpos[self._ee_site][:2]
        np.minimum(self._min_xy_dist, np.linalg.norm(pos[:, :2] - ee_xy, axis=1), out=self._min_xy_dist)

    def touching(self, a: str, b: str) -> bool:
        """Whether objects `a` and `b` are in contact now; the name "gripper" means palm + fingers."""
        n = self.data.ncon
        if n == 0:
            return False
        g1, g2 = self.data.contact.geom1[:n], self.data.contact.geom2[:n]
        ga, gb = self._geoms[a], self._geoms[b]
        return bool(np.any((np.isin(g1, ga) & np.isin(g2, gb)) | (np.isin(g1, gb) & np.isin(g2, ga))))

    # ----------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # One draw from the episode generator, mixed with the task id: the same seed gives
        # different layouts in different tasks (more variety across a multi-task dataset).
        rng = np.random.default_rng([int(self.np_random.integers(2**63)), zlib.crc32(self.task.id.encode())])
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._draw_colors(rng)
        layout = self._draw_layout(rng)
        for name, xy in layout.items():
            kind = self.kind(name)
            if kind in GRASPABLE:
                adr = m.jnt_qposadr[m.body_jntadr[self._body[name]]]
                z = CUBE_HALF if kind == "cube" else BALL_RADIUS
                yaw = rng.uniform(-MAX_YAW, MAX_YAW) if kind == "cube" else 0.0
                d.qpos[adr : adr + 7] = [xy[0], xy[1], z, math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)]
            else:
                d.mocap_pos[m.body_mocapid[self._body[name]]] = [xy[0], xy[1], 0.0]
        ee = rng.uniform(START_LOW, START_HIGH)
        d.mocap_pos[self._mocap] = ee + self._ee_offset
        d.qpos[self._hand_qpos : self._hand_qpos + 3] = ee + self._ee_offset
        for a in self._finger_qpos:
            d.qpos[a] = FINGER_OPEN
        d.ctrl[:] = FINGER_OPEN
        mujoco.mj_forward(m, d)
        self._start_pos = self.data.xpos[self._graspable_body].copy()
        self._max_lift[:], self._max_push[:], self._min_xy_dist[:] = 0.0, 0.0, np.inf
        return self._obs(), {"is_success": False}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (4,):
            raise ConfigError(f"action must have shape (4,), got {np.shape(action)}")
        a = np.clip(a, -1.0, 1.0)
        d = self.data
        target = np.clip(self.ee_target + a[:3] * MAX_STEP, EE_LOW, EE_HIGH)
        d.mocap_pos[self._mocap] = target + self._ee_offset
        d.ctrl[:] = FINGER_OPEN * (1.0 - a[3]) / 2.0
        mujoco.mj_step(self.model, d, nstep=SUBSTEPS)
        success = bool(self.task.success(self))
        self._track_objects()
        return self._obs(), float(success), success, False, {"is_success": success,
                                                             "engaged_object": self.engaged_object()}

    def render(self):
        """The scene camera frame, uint8 (render_size, render_size, 3), for videos."""
        if self.render_mode != "rgb_array":
            return None
        return render(self._get_renderer(self.render_size), self.data, "scene")

    def close(self):
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def _get_renderer(self, size: int) -> mujoco.Renderer:
        if size not in self._renderers:
            self._renderers[size] = _new_renderer(self.model, size)
        return self._renderers[size]

    # ----------------------------------------------------------------- helpers
    def _obs(self) -> dict:
        image = np.stack([render(self._renderer, self.data, c) for c in self.cameras])
        proprio = np.array([*self.ee_pos, self.gripper_opening / (2 * FINGER_OPEN)], dtype=np.float32)
        space = self.observation_space["proprio"]
        return {"image": image, "proprio": np.clip(proprio, space.low, space.high)}

    def _draw_colors(self, rng: np.random.Generator) -> None:
        """Fixed colours as given; each distractor gets a colour no other object of its kind has."""
        self._colors = {o.name: o.color for o in self.task.objects if o.color is not None}
        for o in self.task.objects:
            if o.color is None:
                taken = {c for n, c in self._colors.items() if self.kind(n) == o.kind}
                free = [c for c in DISTRACTOR_COLORS if c not in taken] or list(DISTRACTOR_COLORS)
                self._colors[o.name] = free[int(rng.integers(len(free)))]
            self.model.geom_rgba[self._geoms[o.name]] = COLORS[self._colors[o.name]]

    def _draw_layout(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """{name: xy (2,)}: footprints apart by CLEARANCE, and `task.layout_ok` holds."""
        low, high = TABLE_REGION
        objs = sorted(self.task.objects, key=lambda o: -FOOTPRINT[o.kind])  # big ones first
        for _ in range(2000):
            layout: dict[str, np.ndarray] = {}
            for o in objs:
                for _ in range(100):
                    xy = rng.uniform(low, high)
                    if all(np.linalg.norm(xy - p) >= FOOTPRINT[o.kind] + FOOTPRINT[self.kind(n)] + CLEARANCE
                           for n, p in layout.items()):
                        layout[o.name] = xy
                        break
                else:
                    break
            if len(layout) == len(objs) and (self.task.layout_ok is None or self.task.layout_ok(layout)):
                return {o.name: layout[o.name] for o in self.task.objects}
        raise ConfigError(f"task {self.task.id!r}: could not place its objects; use fewer or a looser layout_ok")
