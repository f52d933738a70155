//! A reader for PyTorch checkpoints written by `torch.save` (the zip format, PyTorch ≥ 1.6's
//! default): `archive/data.pkl` is a pickle whose tensors refer, by persistent id, to raw
//! little-endian storages `archive/data/<key>`. A small pickle machine covers what state dicts and
//! the training scripts' wrappers hold (dicts, ordered dicts, lists, tuples, numbers, strings,
//! tensors); anything else becomes an opaque value, and only a tensor that needs it is an error.
//! No Python runs, and no pickled code is executed: only tensor rebuilding and `OrderedDict` are
//! interpreted.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

/// A tensor read from a checkpoint, converted to float32 (the zoo's parameters and BatchNorm
/// statistics are float32), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PthTensor {
    pub shape: Vec<usize>,
    pub dtype: String,
    pub data: Vec<f32>,
}

#[derive(Clone, Debug)]
enum V {
    None,
    /// A bool or a float (nothing kdlab reads).
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String),
    /// (storage type name, key in archive/data/).
    Storage(String, String),
    Tensor(Rc<PthTensor>),
    /// A value kdlab does not interpret (bytes, an object of another class).
    Opaque,
    Mark,
}

/// What reading one checkpoint may cost. A checkpoint is a file from outside (a model hub, a
/// paper's release), so every amount it declares is checked against these before memory is
/// given to it; each has a `kdlab import` flag to raise it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read out of the archive in all: the pickle and every storage, decompressed
    /// (`--max-archive-mib`). Bounds a zip bomb, and entries that share their bytes.
    pub archive_bytes: u64,
    /// How deeply the pickle's containers may nest (`--max-pickle-depth`). Values are dropped
    /// and cloned recursively, so this also bounds the stack they need.
    pub pickle_depth: usize,
    /// Bytes the pickle's values may take, tensors converted to float32 included
    /// (`--max-pickle-mib`). Bounds memo copies and storages that claim more elements than they
    /// hold.
    pub pickle_bytes: u64,
}

/// The deepest `pickle_depth` kdlab accepts: values nested deeper would need more stack to drop
/// than a thread has.
pub const MAX_PICKLE_DEPTH: usize = 10_000;

impl Default for Limits {
    /// 4 GiB of archive and 4 GiB of values hold the largest zoo model (ImageNet ResNet-152,
    /// 230 MB of float32) many times over, with its optimizer state; torch.save's pickles of
    /// state dicts nest 3 to 5 levels.
    fn default() -> Self {
        Limits { archive_bytes: 4 << 30, pickle_depth: 1000, pickle_bytes: 4 << 30 }
    }
}

/// Every tensor of a checkpoint under its key: a state dict, or the first state dict found under
/// `state_dict`, `model`, `model_state_dict`, `net` or `student` in a wrapper dict. A `module.`
/// prefix on every key (`nn.DataParallel`) is removed.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, PthTensor>> {
    read_state_dict_with(path, &Limits::default())
}

/// As [`read_state_dict`], within `limits`.
pub fn read_state_dict_with(path: &Path, limits: &Limits) -> Result<BTreeMap<String, PthTensor>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse_state_dict(std::io::BufReader::new(file), path, limits)
}

/// As [`read_state_dict_with`], from any reader (`path` names the file in errors); the fuzz
/// targets call it on bytes in memory.
pub fn parse_state_dict<R: Read + Seek>(
    reader: R,
    path: &Path,
    limits: &Limits,
) -> Result<BTreeMap<String, PthTensor>> {
    parse_archive(reader, limits).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}

fn parse_archive<R: Read + Seek>(reader: R, limits: &Limits) -> Result<BTreeMap<String, PthTensor>> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| {
        anyhow::anyhow!(
            "not a PyTorch zip checkpoint ({e}); truncated, or saved with \
             _use_new_zipfile_serialization=False: load it in PyTorch and torch.save it again"
        )
    })?;
    // Nothing is extracted to disk, but a name that climbs out of the archive (or is absolute)
    // is never written by torch.save: such a file was made to attack unzip tools, so it is refused.
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(|e| anyhow::anyhow!("reading the zip directory ({e})"))?;
        if f.enclosed_name().is_none() || f.name().split(['/', '\\']).any(|c| c == "..") {
            bail!(
                "the zip entry '{}' names a path outside the archive (absolute, or through '..'): \
                 torch.save never writes one, so the file is not a checkpoint, or was made to attack",
                f.name().escape_debug()
            );
        }
    }
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .context("a zip file without <archive>/data.pkl: not a torch.save checkpoint")?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut budget = limits.archive_bytes;
    let bytes = read_entry(&mut zip, &pkl, &mut budget, limits)?;
    let mut storages: BTreeMap<String, Rc<Vec<u8>>> = BTreeMap::new();
    let mut load = |key: &str| -> Result<Rc<Vec<u8>>> {
        if let Some(b) = storages.get(key) {
            return Ok(b.clone());
        }
        let name = format!("{prefix}data/{key}");
        let b = Rc::new(read_entry(&mut zip, &name, &mut budget, limits).context("reading a tensor storage")?);
        storages.insert(key.to_string(), b.clone());
        Ok(b)
    };
    let root = unpickle(&bytes, &mut load, limits).with_context(|| format!("reading {pkl}"))?;
    let dict = state_dict_of(&root)
        .context("holds no state dict (a dict of tensors, or one under 'state_dict' or 'model')")?;
    let mut out = BTreeMap::new();
    for (k, v) in dict {
        if let (V::Str(k), V::Tensor(t)) = (k, v) {
            out.insert(k.clone(), (**t).clone());
        }
    }
    if !out.is_empty() && out.keys().all(|k| k.starts_with("module.")) {
        out = out.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
    }
    Ok(out)
}

/// The decompressed bytes of the entry `name`, charged to `budget` (the archive bytes left). The
/// size the zip directory declares is checked first; the decompressor is then read no further
/// than that, so an entry that inflates beyond its declared size (a zip bomb that lies) is caught
/// after the declared size, not after the bomb.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    budget: &mut u64,
    limits: &Limits,
) -> Result<Vec<u8>> {
    let mut f = zip.by_name(name).map_err(|e| anyhow::anyhow!("reading {name} ({e})"))?;
    let declared = f.size();
    let too_big = || {
        anyhow::anyhow!(
            "{name} unpacks to more than the {} MiB the archive may hold (--max-archive-mib {}): \
             a zip bomb, or a checkpoint larger than kdlab reads by default — raise the limit if you \
             trust the file",
            limits.archive_bytes >> 20,
            limits.archive_bytes >> 20
        )
    };
    if declared > *budget {
        return Err(too_big());
    }
    let mut b = Vec::with_capacity(declared.min(1 << 26) as usize);
    (&mut f).take(declared + 1).read_to_end(&mut b).map_err(|e| anyhow::anyhow!("reading {name} ({e})"))?;
    if b.len() as u64 > declared {
        bail!("{name} unpacks to more bytes than the zip directory declares ({declared}): the file is damaged or made to attack");
    }
    *budget -= b.len() as u64;
    Ok(b)
}

/// The state dict in a checkpoint's root value.
fn state_dict_of(v: &V) -> Option<&Vec<(V, V)>> {
    let V::Dict(items) = v else { return None };
    if items.iter().any(|(_, v)| matches!(v, V::Tensor(_))) {
        return Some(items);
    }
    for key in ["state_dict", "model", "model_state_dict", "net", "student"] {
        if let Some((_, inner)) = items.iter().find(|(k, _)| matches!(k, V::Str(s) if s == key)) {
            if let Some(d) = state_dict_of(inner) {
                return Some(d);
            }
        }
    }
    None
}

fn element_size(storage: &str) -> Option<(usize, &'static str)> {
    Some(match storage {
        "FloatStorage" => (4, "float32"),
        "DoubleStorage" => (8, "float64"),
        "HalfStorage" => (2, "float16"),
        "BFloat16Storage" => (2, "bfloat16"),
        "LongStorage" => (8, "int64"),
        "IntStorage" => (4, "int32"),
        "ShortStorage" => (2, "int16"),
        "CharStorage" => (1, "int8"),
        "ByteStorage" => (1, "uint8"),
        "BoolStorage" => (1, "bool"),
        _ => return None,
    })
}

/// Element `i` of a little-endian storage, as f32.
fn element(bytes: &[u8], dtype: &str, i: usize) -> f32 {
    let b = |n: usize| &bytes[i * n..(i + 1) * n];
    match dtype {
        "float32" => f32::from_le_bytes(b(4).try_into().unwrap()),
        "float64" => f64::from_le_bytes(b(8).try_into().unwrap()) as f32,
        "float16" => half::f16::from_le_bytes(b(2).try_into().unwrap()).to_f32(),
        "bfloat16" => half::bf16::from_le_bytes(b(2).try_into().unwrap()).to_f32(),
        "int64" => i64::from_le_bytes(b(8).try_into().unwrap()) as f32,
        "int32" => i32::from_le_bytes(b(4).try_into().unwrap()) as f32,
        "int16" => i16::from_le_bytes(b(2).try_into().unwrap()) as f32,
        "int8" => b(1)[0] as i8 as f32,
        _ => b(1)[0] as f32,
    }
}

fn as_ints(v: &V, what: &str) -> Result<Vec<usize>> {
    let (V::Tuple(items) | V::List(items)) = v else { bail!("a tensor's {what} is not a tuple") };
    items
        .iter()
        .map(|x| match x {
            V::Int(i) if *i >= 0 => Ok(*i as usize),
            _ => bail!("a tensor's {what} holds a negative number or a non-integer"),
        })
        .collect()
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`, any strides. The
/// element count is charged to `mem` before anything is allocated: a storage record may claim
/// any size.
fn rebuild_tensor(args: &[V], load: &mut dyn FnMut(&str) -> Result<Rc<Vec<u8>>>, mem: &mut Memory) -> Result<V> {
    let [V::Storage(kind, key), V::Int(offset), size, stride, ..] = args else {
        bail!("a tensor is not (storage, offset, size, stride, …)")
    };
    let (esize, dtype) =
        element_size(kind).with_context(|| format!("tensors of storage type {kind} are not supported"))?;
    let (shape, stride) = (as_ints(size, "size")?, as_ints(stride, "stride")?);
    if shape.len() != stride.len() {
        bail!("a tensor's size and stride differ in length");
    }
    let offset = usize::try_from(*offset).map_err(|_| anyhow::anyhow!("a tensor's storage offset is negative"))?;
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let bytes_needed = numel.and_then(|n| n.checked_mul(4)).map_or(u64::MAX, |b| b as u64);
    mem.charge(bytes_needed, || format!("a tensor of shape {shape:?} (from storage {key})"))?;
    let numel = numel.expect("charged, so it fits");
    let bytes = load(key)?;
    let elements = bytes.len() / esize;
    // The last element the tensor reaches, in u128 so that no stride can overflow it.
    if numel > 0 {
        let last = offset as u128 + shape.iter().zip(&stride).map(|(&d, &s)| (d as u128 - 1) * s as u128).sum::<u128>();
        if last >= elements as u128 {
            bail!("a tensor reaches element {last} of storage {key}, which has {elements}: the file is damaged");
        }
    }
    let mut data = Vec::with_capacity(numel);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        let at = offset + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        data.push(element(&bytes, dtype, at));
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(V::Tensor(Rc::new(PthTensor { shape, dtype: dtype.to_string(), data })))
}

/// The globals a checkpoint's pickle may name: what torch.save writes for state dicts, tensors
/// and parameters (PyTorch's own `weights_only` set), and plain data classes that training
/// scripts put in wrappers. kdlab calls none of them — tensors are rebuilt by its own code, the
/// rest become opaque values — but a pickle that names anything else (`os.system`,
/// `builtins.eval`, a class with a `__reduce__`) was not written by torch.save of a state dict,
/// and is refused rather than half-read.
fn allowed_global(g: &str) -> bool {
    const EXACT: [&str; 24] = [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.nn.parameter.Parameter",
        "torch.Size",
        "torch.device",
        "torch.strided",
        "torch.serialization._get_layout",
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "builtins.complex",
        "builtins.bytearray",
        "_codecs.encode",
        "argparse.Namespace",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy.dtypes.Float64DType",
    ];
    EXACT.contains(&g)
        || g.strip_prefix("torch.").is_some_and(|n| {
            // Storage classes (torch.FloatStorage) and dtypes (torch.float32) are names, not code.
            (n.ends_with("Storage") || element_size(n).is_some() || DTYPES.contains(&n)) && !n.contains('.')
        })
}

const DTYPES: [&str; 14] = [
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool", "float", "double",
    "half", "long",
];

/// The memory the pickle's values take, as far as kdlab can charge it: each value on the stack
/// or in the memo, the text of strings, copies made by memo gets, and tensors converted to
/// float32 (charged before allocation).
struct Memory {
    used: u64,
    limit: u64,
}

/// What one value costs beyond its contents (an enum slot and its container's share).
const VALUE_BYTES: u64 = std::mem::size_of::<V>() as u64;

impl Memory {
    fn charge(&mut self, bytes: u64, what: impl FnOnce() -> String) -> Result<()> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            bail!(
                "{} would take the pickle's values past the {} MiB kdlab allows (--max-pickle-mib {}): \
                 the file claims more than it holds, or is larger than kdlab reads by default — raise the \
                 limit if you trust it",
                what(),
                self.limit >> 20,
                self.limit >> 20
            );
        }
        Ok(())
    }
}

/// What a deep copy of `v` costs (tensors are shared, not copied).
fn weight(v: &V) -> u64 {
    VALUE_BYTES
        + match v {
            V::Str(s) | V::Global(s) => s.len() as u64,
            V::Storage(a, b) => (a.len() + b.len()) as u64,
            V::Tuple(items) | V::List(items) => items.iter().map(weight).sum(),
            V::Dict(items) => items.iter().map(|(k, v)| weight(k) + weight(v)).sum(),
            _ => 0,
        }
}

/// A value on the machine's stack or in its memo, with how deeply containers nest in it (0 for
/// a value that is not a container), kept so that depth is checked without walking values.
#[derive(Clone)]
struct Item {
    v: V,
    depth: usize,
}

/// Runs the pickle program in `bytes` (protocols 2 to 5, the opcodes torch.save emits), within
/// `limits`: containers nest at most `pickle_depth` deep, and values take at most
/// `pickle_bytes`. Every opcode consumes input or is charged, so the time is bounded by the
/// file's size and the memory limit.
fn unpickle(bytes: &[u8], load: &mut dyn FnMut(&str) -> Result<Rc<Vec<u8>>>, limits: &Limits) -> Result<V> {
    let mut stack: Vec<Item> = vec![];
    let mut memo: BTreeMap<u32, Item> = BTreeMap::new();
    let mut mem = Memory { used: 0, limit: limits.pickle_bytes };
    let max_depth = limits.pickle_depth;
    let mut pos = 0usize;
    let take = |n: usize, pos: &mut usize| -> Result<&[u8]> {
        let s = pos
            .checked_add(n)
            .and_then(|end| bytes.get(*pos..end))
            .context("the pickle ends early: the file is truncated")?;
        *pos += n;
        Ok(s)
    };
    fn pop(stack: &mut Vec<Item>) -> Result<Item> {
        stack.pop().context("a malformed pickle (its stack is empty)")
    }
    fn pop_mark(stack: &mut Vec<Item>) -> Result<Vec<Item>> {
        let at = stack.iter().rposition(|v| matches!(v.v, V::Mark)).context("a malformed pickle (no mark)")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    }
    fn pairs(items: Vec<V>) -> Vec<(V, V)> {
        let mut it = items.into_iter();
        let mut out = vec![];
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        out
    }
    let too_deep = |at: usize| {
        anyhow::anyhow!(
            "the pickle nests containers more than {max_depth} deep (at byte {at}; --max-pickle-depth {max_depth}): \
             a state dict nests a few levels, so the file is damaged or made to exhaust the stack"
        )
    };
    // A container of `items`: its depth is one more than its deepest item's.
    let container = |items: Vec<Item>, make: fn(Vec<V>) -> V, at: usize| -> Result<Item> {
        let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
        if depth > max_depth {
            return Err(too_deep(at));
        }
        Ok(Item { v: make(items.into_iter().map(|i| i.v).collect()), depth })
    };
    // Adds `items` to the container on top of the stack (APPEND(S), SETITEM(S)).
    let extend = |stack: &mut Vec<Item>, items: Vec<Item>, at: usize| -> Result<()> {
        let deepest = items.iter().map(|i| i.depth).max().unwrap_or(0);
        let Some(top) = stack.last_mut() else { bail!("a malformed pickle (its stack is empty)") };
        let values = items.into_iter().map(|i| i.v);
        match &mut top.v {
            V::List(l) => l.extend(values),
            V::Dict(d) => d.extend(pairs(values.collect())),
            _ => return Ok(()), // an object kdlab does not interpret: its items are dropped
        }
        top.depth = top.depth.max(1 + deepest);
        if top.depth > max_depth {
            return Err(too_deep(at));
        }
        Ok(())
    };
    let leaf = |v: V| Item { v, depth: 0 };
    loop {
        let at = pos;
        let op = take(1, &mut pos)?[0];
        mem.charge(VALUE_BYTES, || format!("the value at byte {at}"))?;
        match op {
            0x80 => pos += 1,                      // PROTO
            0x95 => pos += 8,                      // FRAME
            b'.' => return Ok(pop(&mut stack)?.v), // STOP
            b'(' => stack.push(leaf(V::Mark)),
            b'}' => stack.push(Item { v: V::Dict(vec![]), depth: 1 }),
            b']' => stack.push(Item { v: V::List(vec![]), depth: 1 }),
            b')' => stack.push(Item { v: V::Tuple(vec![]), depth: 1 }),
            b'N' => stack.push(leaf(V::None)),
            0x88 | 0x89 => stack.push(leaf(V::Scalar)),
            b'J' => stack.push(leaf(V::Int(i32::from_le_bytes(take(4, &mut pos)?.try_into()?) as i64))),
            b'K' => stack.push(leaf(V::Int(take(1, &mut pos)?[0] as i64))),
            b'M' => stack.push(leaf(V::Int(u16::from_le_bytes(take(2, &mut pos)?.try_into()?) as i64))),
            0x8a => {
                // LONG1
                let n = take(1, &mut pos)?[0] as usize;
                let b = take(n, &mut pos)?;
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate().take(8) {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(leaf(V::Int(v)));
            }
            b'G' => {
                take(8, &mut pos)?;
                stack.push(leaf(V::Scalar));
            }
            b'X' | 0x8c | 0x8d => {
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                let n = match op {
                    b'X' => u32::from_le_bytes(take(4, &mut pos)?.try_into()?) as usize,
                    0x8c => take(1, &mut pos)?[0] as usize,
                    _ => usize::try_from(u64::from_le_bytes(take(8, &mut pos)?.try_into()?)).unwrap_or(usize::MAX),
                };
                let s = String::from_utf8_lossy(take(n, &mut pos)?).into_owned();
                mem.charge(s.len() as u64, || format!("the string at byte {at}"))?;
                stack.push(leaf(V::Str(s)));
            }
            b'C' | b'B' | 0x8e => {
                // SHORT_BINBYTES, BINBYTES, BINBYTES8: kept opaque
                let n = match op {
                    b'C' => take(1, &mut pos)?[0] as usize,
                    b'B' => u32::from_le_bytes(take(4, &mut pos)?.try_into()?) as usize,
                    _ => usize::try_from(u64::from_le_bytes(take(8, &mut pos)?.try_into()?)).unwrap_or(usize::MAX),
                };
                take(n, &mut pos)?;
                stack.push(leaf(V::Opaque));
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(container(items, V::Tuple, at)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    bail!("a malformed pickle (short tuple)");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(container(items, V::Tuple, at)?);
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(container(items, V::List, at)?);
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                stack.push(container(items, |v| V::Dict(pairs(v)), at)?);
            }
            b'a' => {
                let v = pop(&mut stack)?;
                extend(&mut stack, vec![v], at)?;
            }
            b'e' | b'u' => {
                let items = pop_mark(&mut stack)?;
                extend(&mut stack, items, at)?;
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                extend(&mut stack, vec![k, v], at)?;
            }
            b'c' | 0x93 => {
                // GLOBAL ("module\nname\n") and STACK_GLOBAL (module and name on the stack)
                let (module, name) = if op == b'c' {
                    let mut line = || -> Result<String> {
                        let rest = bytes.get(pos..).unwrap_or_default();
                        let end = rest.iter().position(|&b| b == b'\n').context("the pickle ends early")?;
                        pos += end + 1;
                        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
                    };
                    (line()?, line()?)
                } else {
                    let name = pop(&mut stack)?.v;
                    let module = pop(&mut stack)?.v;
                    let (V::Str(m), V::Str(n)) = (module, name) else { bail!("a malformed pickle (STACK_GLOBAL)") };
                    (m, n)
                };
                let g = format!("{module}.{name}");
                if !allowed_global(&g) {
                    bail!(
                        "the pickle asks for the Python global '{}' (at byte {at}), which a state dict never needs: \
                         kdlab runs no pickled code, and refuses a file that names any (a checkpoint from a source \
                         you trust can be loaded in PyTorch and saved again with torch.save(model.state_dict()))",
                        g.escape_debug()
                    );
                }
                mem.charge(g.len() as u64, || format!("the global at byte {at}"))?;
                stack.push(leaf(V::Global(g)));
            }
            b'Q' => {
                // BINPERSID: ('storage', storage type, key, location, numel)
                let pid = pop(&mut stack)?.v;
                let V::Tuple(t) = pid else { bail!("a persistent id that is not a tuple") };
                match &t[..] {
                    [V::Str(tag), V::Global(kind), V::Str(key), ..] if tag == "storage" => {
                        let kind = kind.rsplit('.').next().unwrap_or(kind).to_string();
                        stack.push(leaf(V::Storage(kind, key.clone())));
                    }
                    _ => bail!("a persistent id other than a tensor storage"),
                }
            }
            b'R' | 0x81 => {
                // REDUCE, NEWOBJ
                let args = pop(&mut stack)?.v;
                let f = pop(&mut stack)?.v;
                let args = match args {
                    V::Tuple(a) => a,
                    other => vec![other],
                };
                let v = match &f {
                    V::Global(g) if g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor" => {
                        leaf(rebuild_tensor(&args, load, &mut mem)?)
                    }
                    V::Global(g) if g == "torch._utils._rebuild_parameter" => {
                        leaf(args.into_iter().next().context("_rebuild_parameter without a tensor")?)
                    }
                    V::Global(g) if g == "collections.OrderedDict" => Item { v: V::Dict(vec![]), depth: 1 },
                    _ => leaf(V::Opaque),
                };
                stack.push(v);
            }
            b'b' => {
                // BUILD: an object's state (an OrderedDict's _metadata): dropped.
                pop(&mut stack)?;
            }
            b'q' | b'r' | 0x94 => {
                // BINPUT, LONG_BINPUT, MEMOIZE: the memo keeps a copy, charged.
                let k = match op {
                    b'q' => take(1, &mut pos)?[0] as u32,
                    b'r' => u32::from_le_bytes(take(4, &mut pos)?.try_into()?),
                    _ => memo.len() as u32,
                };
                let top = stack.last().context("a malformed pickle (memo)")?;
                mem.charge(weight(&top.v), || format!("the memo entry at byte {at}"))?;
                memo.insert(k, top.clone());
            }
            b'h' | b'j' => {
                // BINGET, LONG_BINGET: a copy of a memo entry, charged.
                let k = match op {
                    b'h' => take(1, &mut pos)?[0] as u32,
                    _ => u32::from_le_bytes(take(4, &mut pos)?.try_into()?),
                };
                let item = memo.get(&k).context("a malformed pickle (memo)")?;
                mem.charge(weight(&item.v), || format!("the memo copy at byte {at}"))?;
                stack.push(item.clone());
            }
            other => bail!("pickle opcode 0x{other:02x} at byte {at} is not supported"),
        }
    }
}

/// A `torch.save` checkpoint of float32 tensors (name, shape, row-major values) as PyTorch ≥ 1.6
/// writes it — an `OrderedDict` of `_rebuild_tensor_v2` calls over `archive/data/<i>` storages,
/// stored uncompressed, with its `byteorder` and `version` records. For tests, and as the
/// fuzzers' seed.
pub fn encode_state_dict(tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    use std::io::Write;
    fn text(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn ints(p: &mut Vec<u8>, v: &[usize]) {
        p.push(b'(');
        v.iter().for_each(|&x| int(p, x));
        p.push(b't');
    }
    let ordered_dict = b"ccollections\nOrderedDict\n)R";
    let mut p = vec![0x80, 2];
    p.extend_from_slice(ordered_dict);
    p.push(b'(');
    for (i, (name, shape, _)) in tensors.iter().enumerate() {
        text(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        text(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        text(&mut p, &i.to_string());
        text(&mut p, "cpu");
        int(&mut p, shape.iter().product());
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        ints(&mut p, shape);
        let stride: Vec<usize> = (0..shape.len()).map(|d| shape[d + 1..].iter().product()).collect();
        ints(&mut p, &stride);
        p.push(0x89);
        p.extend_from_slice(ordered_dict);
        p.extend_from_slice(b"tR");
    }
    p.extend_from_slice(b"u.");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut entry = |name: &str, bytes: &[u8]| {
        zip.start_file(format!("archive/{name}"), stored).expect("in memory");
        zip.write_all(bytes).expect("in memory");
    };
    entry("data.pkl", &p);
    entry("byteorder", b"little");
    for (i, (_, _, values)) in tensors.iter().enumerate() {
        entry(&format!("data/{i}"), &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }
    entry("version", b"3\n");
    zip.finish().expect("in memory").into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], limits: &Limits) -> Result<BTreeMap<String, PthTensor>> {
        parse_state_dict(std::io::Cursor::new(bytes), Path::new("t.pth"), limits)
    }

    #[test]
    fn an_encoded_state_dict_reads_back() {
        let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let bytes = encode_state_dict(&[("fc.weight", &[2, 3], &w), ("fc.bias", &[2], &[0.25, -4.0])]);
        let sd = read(&bytes, &Limits::default()).unwrap();
        assert_eq!(sd.len(), 2);
        assert_eq!(sd["fc.weight"].shape, vec![2, 3]);
        assert_eq!(sd["fc.weight"].data, w);
        assert_eq!(sd["fc.bias"].data, vec![0.25, -4.0]);
        // The same file within a memory limit below its tensors' 32 bytes is refused, naming it.
        let tight = Limits { pickle_bytes: 20, ..Limits::default() };
        let e = format!("{:#}", read(&bytes, &tight).unwrap_err());
        assert!(e.starts_with("t.pth: ") && e.contains("--max-pickle-mib"), "{e}");
    }
}
