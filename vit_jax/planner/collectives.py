"""Collective operations of a compiled XLA program, and the bytes each device sends for them.

Reads the optimised HLO text (`jax.jit(f).lower(...).compile().as_text()`)
of either compiler (XLA:CPU's, or the TPU compiler's from `tpu.py`) and
finds every all-reduce, all-gather, reduce-scatter, all-to-all and
collective-permute, including their asynchronous `-start` forms and those
inside while loops, counted once per iteration (`trip_count`). Bytes per
device are those a bandwidth-optimal ring
sends over the links of one device, with S the operand bytes of the
collective on one device and g the size of its replica group:

| collective | bytes sent per device |
|---|---|
| all-reduce | 2 (g-1)/g x S |
| all-gather | (g-1) x S         (S is one shard: (g-1)/g of the result) |
| reduce-scatter | (g-1)/g x S   (S is the whole unreduced operand) |
| all-to-all | (g-1)/g x S |
| collective-permute | S |

So pure data parallelism over n devices, which all-reduces the gradients
once, sends 2 (n-1)/n x the gradient bytes per device.

XLA's CPU compiler leaves a reduction whose result each device only slices
its 1/g part of as an all-reduce followed by that slice; the TPU and GPU
compilers turn the pair into a reduce-scatter (XLA's ReduceScatterCreator
pass). So that a program compiled on CPU reports what a TPU or GPU sends,
`parse` counts an all-reduce (or one element of a combined, tuple-shaped
all-reduce) as a reduce-scatter when every use of it reads the partition id
and keeps at most 1/g of it (FSDP's gradients). The TPU compiler's own
output (tiled layouts, `:T(`) is taken as it is: what it left an
all-reduce is one.

The text is the interface: jax 0.10.2 has no public structured view of a
compiled module (`compiled.runtime_executable().hlo_modules()` are jaxlib
internals, for XLA:CPU and for libtpu's compile-only executables alike,
whose instructions expose only names, opcodes, operands and users: no
shapes, replica groups or loop trip counts; the serialized HloModule proto
needs XLA's hlo.proto, which jax does not ship; TensorFlow's copy reads it,
at TensorFlow's XLA version, and the planner does not import TensorFlow).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Optional, Sequence

KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
         'collective-permute')

#: Bytes of one element of each HLO primitive type.
DTYPE_BYTES = {
    'pred': 1, 's4': 0.5, 'u4': 0.5, 's8': 1, 'u8': 1, 'f8e4m3fn': 1,
    'f8e5m2': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4,
    'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16, 'token': 0,
}

_ARRAY = re.compile(r'\b([a-z][a-z0-9]*)\[([0-9,]*)\]')
# `%name = TYPE opcode(` ; the name may lack the % in newer printers.
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$')
_COMPUTATION = re.compile(r'^\s*(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_TRIP_COUNT = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_MESH_GROUPS = re.compile(
    r'replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\([^)]*\))?\s*'
    r'\{([^}]*)\}')
_MESH_AXIS = re.compile(r"'?([\w.\-]+)'?=(\d+)")
_AXIS_REF = re.compile(r"'?([\w.\-]+)'?(?::\(\d+\)(\d+))?")
_CALLS = re.compile(
    r'\b(?:body|to_apply|calls|branch_computations|true_computation|'
    r'false_computation)=\{?([%\w.\-, ]+)\}?')


def shape_bytes(text: str) -> float:
  """Bytes of every array in an HLO type ('(f32[2,3]{1,0}, bf16[4])' -> 32)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(text):
    if dtype not in DTYPE_BYTES:
      continue
    total += DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',')
                                             if d)
  return total


def shape_elements(text: str) -> int:
  """Elements of every array in an HLO type."""
  return sum(math.prod(int(d) for d in dims.split(',') if d)
             for dtype, dims in _ARRAY.findall(text) if dtype in DTYPE_BYTES)


def group_size(attributes: str, num_devices: int) -> int:
  """Devices in each replica group of a collective's attributes.

  Explicit groups `{{0,1},{2,3}}`, iota groups `[2,4]<=[8]` (2 groups of
  4), mesh axes `mesh['a'=2,'b'=4] {'b'}` (the TPU compiler's: the product
  of the named axes, a sub-axis `'b':(1)2` by its own size), or none / `{}`
  (one group of all `num_devices`).
  """
  mesh = _MESH_GROUPS.search(attributes)
  if mesh:
    sizes = {name: int(size) for name, size in _MESH_AXIS.findall(mesh[1])}
    group = 1
    for name, sub in _AXIS_REF.findall(mesh[2]):
      if name not in sizes:
        raise ValueError(f'replica group axis {name!r} is not in the mesh '
                         f'[{mesh[1]}]; pass the HLO text as XLA printed it.')
      group *= int(sub) if sub else sizes[name]
    return group
  iota = re.search(r'replica_groups=\[(\d+),(\d+)\]<=', attributes)
  if iota:
    return int(iota[2])
  first = re.search(r'replica_groups=\{\s*\{([\d,\s]*)\}', attributes)
  if first:
    return len([d for d in first[1].split(',') if d.strip()])
  return num_devices


def sent_bytes(kind: str, operand_bytes: float, group: int) -> float:
  """Bytes one device sends for one collective (the table above)."""
  if group <= 1:
    return 0.0
  if kind == 'all-reduce':
    return 2. * (group - 1) / group * operand_bytes
  if kind == 'all-gather':
    return (group - 1) * operand_bytes
  if kind in ('reduce-scatter', 'all-to-all'):
    return (group - 1) / group * operand_bytes
  if kind == 'collective-permute':
    return operand_bytes
  raise ValueError(f'unknown collective {kind!r}; known: {KINDS}.')


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective instruction of the program, per execution."""
  kind: str
  name: str
  computation: str
  operand_bytes: float
  group: int
  executions: int          # times it runs per call of the program
  #: The replica-group attributes as printed (`slice_split` reads them).
  replica_groups: str = dataclasses.field(default='', compare=False)
  #: Crosses the data-centre network: XLA:TPU's multislice transfer (a host
  #: `send` with `_xla_megascale_transfer_type`), `group` being the slices.
  dcn: bool = False

  @property
  def bytes_per_device(self) -> float:
    """Bytes one device sends for it over one call of the program."""
    return self.executions * sent_bytes(self.kind, self.operand_bytes,
                                        self.group)


def _kind(opcode: str) -> Optional[str]:
  base = opcode.removesuffix('-start')
  return base if base in KINDS else None


def _split_operands(text: str) -> str:
  """The operand list of `opcode(...)`, up to its closing parenthesis."""
  depth = 1
  for i, ch in enumerate(text):
    depth += {'(': 1, ')': -1}.get(ch, 0)
    if depth == 0:
      return text[:i]
  return text


_PASS_THROUGH = ('copy', 'bitcast', 'convert', 'reshape')
_FLIP = {'LT': 'GT', 'LE': 'GE', 'GT': 'LT', 'GE': 'LE', 'NE': 'NE',
         'EQ': 'EQ'}


def iterations(init: int, limit: int, step: int, direction: str
               ) -> Optional[int]:
  """Times `for (i = init; i <direction> limit; i += step)` runs, or None
  when it would not end."""
  if direction == 'LT' and step > 0:
    return max(0, -(-(limit - init) // step))
  if direction == 'LE' and step > 0:
    return max(0, (limit - init) // step + 1)
  if direction == 'GT' and step < 0:
    return max(0, -(-(init - limit) // -step))
  if direction == 'GE' and step < 0:
    return max(0, (init - limit) // -step + 1)
  if direction == 'NE' and step and (limit - init) % step == 0 and \
      (limit - init) // step >= 0:
    return (limit - init) // step
  return None


class _Loops:
  """Reads a while loop's trip count from its instructions.

  XLA:CPU writes it into the loop's `backend_config` (`known_trip_count`);
  the TPU compiler replaces that config with its own, so the count is read
  from the loop itself: the condition compares one element of the loop
  state with a constant, the state starts that element at a constant and
  the body adds a constant to it (lax.scan, fori_loop: 0, N, +1; also after
  the compiler unrolls or shifts the loop).
  """

  def __init__(self, opcodes, rests, operands_of, tuple_index, roots):
    self.opcodes, self.rests = opcodes, rests
    self.operands_of, self.tuple_index = operands_of, tuple_index
    self.roots = roots

  def _through(self, value: str) -> str:
    while (self.opcodes.get(value) in _PASS_THROUGH and
           len(self.operands_of[value]) == 1):
      value = self.operands_of[value][0]
    return value

  def constant(self, value: str) -> Optional[int]:
    value = self._through(value)
    if self.opcodes.get(value) != 'constant':
      return None
    match = re.match(r'\s*(-?\d+)\)', self.rests[value])
    return int(match[1]) if match else None

  def state_index(self, value: str) -> Optional[int]:
    """k when `value` is element k of the loop's parameter."""
    value = self._through(value)
    if self.opcodes.get(value) != 'get-tuple-element':
      return None
    source = self._through(self.operands_of[value][0])
    return (self.tuple_index[value] if self.opcodes.get(source) ==
            'parameter' else None)

  def _unfused(self, name: str) -> tuple[str, list[str], str]:
    """(opcode, operands, attributes) of `name`; a fusion of one operation
    on its parameters (XLA:CPU wraps a loop's compare and add so) is read
    as that operation on the fusion's operands."""
    opcode, operands = self.opcodes[name], self.operands_of[name]
    if opcode != 'fusion':
      return opcode, operands, self.rests[name]
    callee = re.search(r'calls=%?([\w.\-]+)', self.rests[name])
    inner = self.roots.get(callee[1]) if callee else None
    if inner is None:
      return opcode, operands, self.rests[name]
    mapped = []
    for op in self.operands_of[inner]:
      index = re.match(r'\s*(\d+)\)', self.rests[op])
      if self.opcodes[op] != 'parameter' or not index:
        return opcode, operands, self.rests[name]
      mapped.append(operands[int(index[1])])
    return self.opcodes[inner], mapped, self.rests[inner]

  def trip_count(self, name: str) -> Optional[int]:
    """Iterations of while loop `name`, or None when they are not static."""
    rest = self.rests[name]
    known = _TRIP_COUNT.search(rest)
    if known:
      return int(known[1])
    cond = re.search(r'condition=%?([\w.\-]+)', rest)
    body = re.search(r'body=%?([\w.\-]+)', rest)
    if not (cond and body and cond[1] in self.roots and
            body[1] in self.roots):
      return None
    opcode, operands, attributes = self._unfused(self.roots[cond[1]])
    direction = re.search(r'direction=(\w+)', attributes)
    if opcode != 'compare' or not direction or len(operands) != 2:
      return None
    direction, (lhs, rhs) = direction[1], operands
    if self.state_index(lhs) is not None and self.constant(rhs) is not None:
      k, limit = self.state_index(lhs), self.constant(rhs)
    elif self.state_index(rhs) is not None and self.constant(lhs) is not None:
      k, limit, direction = (self.state_index(rhs), self.constant(lhs),
                             _FLIP[direction])
    else:
      return None
    state = self._through(self.operands_of[name][0])
    update = self.roots[body[1]]
    if self.opcodes.get(state) != 'tuple' or self.opcodes[update] != 'tuple':
      return None
    init = self.constant(self.operands_of[state][k])
    opcode, operands, _ = self._unfused(
        self._through(self.operands_of[update][k]))
    increment = None
    if opcode in ('add', 'subtract') and len(operands) == 2:
      a, b = operands
      sign = 1 if opcode == 'add' else -1
      if self.state_index(a) == k and self.constant(b) is not None:
        increment = sign * self.constant(b)
      elif sign == 1 and self.state_index(b) == k and \
          self.constant(a) is not None:
        increment = self.constant(a)
    if init is None or increment is None:
      return None
    return iterations(init, limit, increment, direction)


def parse(hlo_text: str, num_devices: int) -> list[Collective]:
  """Every collective of an HLO module, with how often one call runs it.

  A collective in a while body runs the loop's trip count times per
  iteration of its caller (`_Loops`); a loop whose count is not static is
  an error (the bytes would be a guess).
  """
  computations: dict[str, list[str]] = {}
  entry = None
  current = None
  for line in hlo_text.splitlines():
    if current is None:
      match = _COMPUTATION.match(line)
      if match and '=' not in line.split('{')[0].split('->')[0].split('(')[0]:
        current = match[2]
        computations[current] = []
        if match[1]:
          entry = current
      continue
    if line.strip() == '}':
      current = None
      continue
    computations[current].append(line)
  if entry is None:
    raise ValueError('the HLO text has no ENTRY computation; pass '
                     'compiled.as_text() of a jitted function.')

  shapes: dict[str, str] = {}
  opcodes: dict[str, str] = {}
  operands_of: dict[str, list[str]] = {}
  users: dict[str, list[str]] = {}
  tuple_index: dict[str, int] = {}
  rests: dict[str, str] = {}
  roots: dict[str, str] = {}
  parsed: dict[str, list[tuple[str, str, str, str]]] = {}
  for comp, lines in computations.items():
    parsed[comp] = []
    for line in lines:
      match = _INSTRUCTION.match(line)
      if match:
        name, type_text, opcode, rest = match.groups()
        shapes[name] = type_text
        opcodes[name] = opcode
        rests[name] = rest
        if line.lstrip().startswith('ROOT '):
          roots[comp] = name
        operands_of[name] = re.findall(r'%([\w.\-]+)', _split_operands(rest))
        for op in operands_of[name]:
          users.setdefault(op, []).append(name)
        if opcode == 'get-tuple-element':
          index = re.search(r'index=(\d+)', rest)
          tuple_index[name] = int(index[1]) if index else 0
        parsed[comp].append((name, type_text, opcode, rest))

  def sliced(value: str, elements: int, group: int, depth: int = 0) -> bool:
    """Every use of `value` keeps this device's 1/group of it, possibly
    after element-wise conversions (f32 -> bf16), copies and reshapes."""
    uses = users.get(value, [])
    if not uses or depth > 4:
      return False
    for use in uses:
      out = shape_elements(shapes[use])
      reads_id = any(opcodes.get(o) in ('partition-id', 'replica-id')
                     for o in operands_of[use])
      if not reads_id and len(operands_of[use]) == 1 and out == elements:
        if not sliced(use, elements, group, depth + 1):
          return False
        continue
      if not (reads_id or opcodes[use] == 'dynamic-slice') or \
          out * group > elements:
        return False
    return True

  def split_reduce_scatter(name: str, type_text: str, group: int
                           ) -> tuple[float, float]:
    """(all-reduce bytes, reduce-scatter bytes) of an all-reduce."""
    if group <= 1:
      return shape_bytes(type_text), 0.0
    if not type_text.lstrip().startswith('('):
      size = shape_bytes(type_text)
      return ((0.0, size) if sliced(name, shape_elements(type_text), group)
              else (size, 0.0))
    arrays = _ARRAY.findall(type_text)
    sizes = [DTYPE_BYTES.get(d, 0) * math.prod(int(x) for x in dims.split(',')
                                                if x) for d, dims in arrays]
    counts = [math.prod(int(x) for x in dims.split(',') if x)
              for _, dims in arrays]
    scattered = set()
    by_index: dict[int, list[str]] = {}
    for use in users.get(name, []):
      if opcodes[use] != 'get-tuple-element':
        return float(sum(sizes)), 0.0
      by_index.setdefault(tuple_index[use], []).append(use)
    for i, size in enumerate(sizes):
      gtes = by_index.get(i, [])
      if gtes and all(sliced(g, counts[i], group) for g in gtes):
        scattered.add(i)
    rs = float(sum(sizes[i] for i in scattered))
    return float(sum(sizes)) - rs, rs

  found: list[Collective] = []
  loops = _Loops(opcodes, rests, operands_of, tuple_index, roots)
  tpu = ':T(' in hlo_text    # the TPU compiler's tiled layouts

  def visit(comp: str, times: int, stack: tuple[str, ...]) -> None:
    if comp in stack:
      raise ValueError(f'HLO computation {comp} calls itself.')
    for name, type_text, opcode, rest in parsed.get(comp, []):
      kind = _kind(opcode)
      if kind is not None:
        operands = _split_operands(rest)
        size = shape_bytes(operands)
        if not size:  # Operands printed without their shapes.
          size = sum(shape_bytes(shapes.get(op, ''))
                     for op in operands_of[name])
        group = group_size(rest, num_devices)
        if opcode == 'all-reduce':
          reduced, scattered = (
              (shape_bytes(type_text), 0.0) if tpu else
              split_reduce_scatter(name, type_text, group))
          if scattered:
            found.append(Collective('reduce-scatter', name, comp, scattered,
                                    group, times, _groups_text(rest)))
          if reduced:
            found.append(Collective(kind, name, comp, reduced, group, times,
                                    _groups_text(rest)))
          continue
        found.append(Collective(kind, name, comp, size, group, times,
                                _groups_text(rest)))
        continue
      if opcode == 'send' and _MEGASCALE_TYPE.search(rest):
        found.append(_megascale(name, comp, type_text, rest, times))
        continue
      calls = [c.strip().lstrip('%') for m in _CALLS.findall(rest)
               for c in m.split(',') if c.strip()]
      if not calls:
        continue
      repeat = 1
      if opcode == 'while':
        repeat = loops.trip_count(name)
        if repeat is None:
          raise ValueError(f'while loop {name} has no known trip count, so '
                           f'the collectives in it cannot be counted; use '
                           f'loops of static length (lax.scan).')
      for callee in calls:
        visit(callee, times * repeat, stack + (comp,))

  visit(entry, 1, ())
  return found


@dataclasses.dataclass(frozen=True)
class CollectiveSummary:
  """Collectives of one program call, per kind: how many run, bytes sent."""
  count: dict
  bytes_per_device: dict

  @property
  def total_bytes_per_device(self) -> float:
    return float(sum(self.bytes_per_device.values()))


def summarize(collectives: Iterable[Collective]) -> CollectiveSummary:
  count = {k: 0 for k in KINDS}
  sent = {k: 0.0 for k in KINDS}
  for c in collectives:
    if c.group > 1:
      count[c.kind] += c.executions
      sent[c.kind] += c.bytes_per_device
  return CollectiveSummary(count, sent)


def summarize_hlo(hlo_text: str, num_devices: int) -> CollectiveSummary:
  """Per-kind count and bytes sent per device of one call of the program."""
  return summarize(parse(hlo_text, num_devices))


# --- Slices: what crosses the data-centre network (multislice) ---------------
#
# XLA:TPU compiles a multislice program as one slice's program (its replica
# groups never leave the slice) plus host transfers for what crosses slices:
# a `send`/`recv` pair per array with frontend attributes
# `_xla_megascale_transfer_type="ALL_REDUCE"` and `_xla_megascale_target=
# "{1,2}x{0:15}"` (the slices, then the devices of each: device d of every
# slice reduces with device d of the others). The send is counted once, as
# a collective of that kind over the slices. XLA:CPU (simulated slices)
# keeps one program over every device: a collective crosses DCN when one of
# its replica groups holds devices of two slices.

_MEGASCALE_TYPE = re.compile(r'_xla_megascale_transfer_type="?([A-Z_]+)')
_MEGASCALE_TARGET = re.compile(r'_xla_megascale_target="?\{([\d,\s:]*)\}')
_MEGASCALE_KINDS = {'ALL_REDUCE': 'all-reduce', 'ALL_GATHER': 'all-gather',
                    'REDUCE_SCATTER': 'reduce-scatter',
                    'ALL_TO_ALL': 'all-to-all'}


def _groups_text(attributes: str) -> str:
  match = re.search(r'replica_groups=(mesh\[[^\]]*\](?:,\s*device_ids=\(.*?'
                    r'\))?\s*\{[^}]*\}|\[[\d,]+\]<=\[[\d,]+\](?:T\([\d,]+\))?|'
                    r'\{(?:\{[\d,\s]*\},?\s*)*\})', attributes)
  return match[0] if match else ''


def _count(text: str) -> int:
  """Members of a megascale set: '1,2' -> 2, '0:15' -> 16."""
  total = 0
  for part in text.split(','):
    part = part.strip()
    if ':' in part:
      lo, hi = part.split(':')
      total += int(hi) - int(lo) + 1
    elif part:
      total += 1
  return total


def _megascale(name: str, comp: str, type_text: str, rest: str,
               times: int) -> Collective:
  transfer = _MEGASCALE_TYPE.search(rest)[1]
  kind = _MEGASCALE_KINDS.get(transfer, 'collective-permute')
  target = _MEGASCALE_TARGET.search(rest)
  slices = _count(target[1]) if target else 2
  # The send's value is the first element of its (value, context, token).
  first = _ARRAY.search(type_text)
  size = shape_bytes(first[0]) if first else 0.0
  return Collective(kind, name, comp, size, slices, times, dcn=True)


def replica_groups(text: str, num_devices: int) -> list[list[int]]:
  """The device groups of a collective's `replica_groups=...` text: explicit
  `{{0,1},{2,3}}`, iota `[2,4]<=[4,2]T(1,0)`, or none (one group of all)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  text = text.strip().removeprefix('replica_groups=')
  iota = re.fullmatch(r'\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?', text)
  if iota:
    shape = [int(x) for x in iota[1].split(',')]
    dims = [int(x) for x in iota[2].split(',')]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if iota[3]:
      ids = ids.transpose([int(x) for x in iota[3].split(',')])
    return ids.reshape(shape[0], -1).tolist()
  if text.startswith('mesh'):
    return _mesh_groups(text)
  groups = [[int(x) for x in g.split(',') if x.strip()]
            for g in re.findall(r'\{([\d,\s]*)\}', text)]
  groups = [g for g in groups if g]
  return groups or [list(range(num_devices))]


def _mesh_groups(text: str) -> list[list[int]]:
  """Groups of `mesh['a'=4,'b'=2], device_ids=([4,2]T(1,0)) {'a'}`: the
  devices (iota, transposed, or listed; default 0..n-1) laid out on the
  mesh's axes, one group per position on the axes not named (a named
  sub-axis `'b':(k)m` is the m-sized middle of b split as k, m, rest)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  match = re.match(r'mesh\[([^\]]*)\](?:,\s*device_ids=\((.*?)\))?\s*'
                   r'\{([^}]*)\}', text)
  if match is None:
    raise ValueError(f'cannot read replica groups {text!r}.')
  axes = [(name, int(size)) for name, size in _MESH_AXIS.findall(match[1])]
  n = math.prod(size for _, size in axes)
  listed = (match[2] or '').strip()
  iota = re.fullmatch(r'\[([\d,]+)\](?:T\(([\d,]+)\))?', listed)
  if iota:
    ids = np.arange(n).reshape([int(x) for x in iota[1].split(',')])
    if iota[2]:
      ids = ids.transpose([int(x) for x in iota[2].split(',')])
  elif listed:
    ids = np.asarray([int(x) for x in listed.split(',') if x.strip()])
  else:
    ids = np.arange(n)
  refs = {name: (int(pre), int(size)) if size else None for name, pre, size in
          re.findall(r"'?([\w.\-]+)'?(?::\((\d+)\)(\d+))?", match[3])}
  dims, grouped = [], []
  for name, size in axes:
    ref = refs.get(name, False)
    if ref:  # a sub-axis: split the axis in three, group the middle
      pre, sub = ref
      dims += [pre, sub, size // (pre * sub)]
      grouped.append(len(dims) - 2)
    else:
      dims.append(size)
      if ref is None:
        grouped.append(len(dims) - 1)
  ids = ids.reshape(dims)
  rest = [d for d in range(len(dims)) if d not in grouped]
  size = math.prod(dims[d] for d in grouped)
  return ids.transpose(rest + grouped).reshape(-1, size).tolist()


def slice_split(collectives: Iterable[Collective],
                slice_of: Optional[Sequence[int]] = None
                ) -> tuple[CollectiveSummary, CollectiveSummary]:
  """(ICI, DCN) summaries: a collective crosses DCN when it is XLA:TPU's
  multislice transfer, or when a replica group holds devices of two slices
  (`slice_of[i]`: the slice of the program's i-th device, the order of
  `mesh.devices.flat`)."""
  ici, dcn = [], []
  for c in collectives:
    crosses = c.dcn
    if not crosses and slice_of is not None and len(set(slice_of)) > 1:
      crosses = any(len({slice_of[d] for d in g}) > 1 for g in
                    replica_groups(c.replica_groups, len(slice_of)))
    (dcn if crosses else ici).append(c)
  return summarize(ici), summarize(dcn)
