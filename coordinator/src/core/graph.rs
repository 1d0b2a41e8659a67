//! Static, per-plan scheduling data derived once at submission in O(gates + edges):
//! reverse edges (who waits for a gate, which items wait for an item) in compact
//! CSR form, initial in-degrees, and each gate's priority (its critical-path height).

use gatehouse_common::ids::{GateIdx, ItemIdx};
use gatehouse_common::plan::Plan;

/// Compressed adjacency lists: the targets of node `i` are `targets[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Default)]
pub(crate) struct Csr {
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Csr {
    /// Builds from `(source, target)` pairs over `nodes` sources.
    fn build(nodes: usize, edges: &[(u32, u32)]) -> Self {
        let mut offsets = vec![0u32; nodes + 1];
        for &(s, _) in edges {
            offsets[s as usize + 1] += 1;
        }
        for i in 0..nodes {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut targets = vec![0u32; edges.len()];
        for &(s, t) in edges {
            targets[fill[s as usize] as usize] = t;
            fill[s as usize] += 1;
        }
        Self { offsets, targets }
    }

    /// The targets of `node`.
    pub(crate) fn of(&self, node: usize) -> &[u32] {
        &self.targets[self.offsets[node] as usize..self.offsets[node + 1] as usize]
    }
}

/// Derived graph of one plan.
#[derive(Debug)]
pub(crate) struct PlanGraph {
    /// Gates that list a gate in `needs`.
    pub(crate) needed_by: Csr,
    /// Items that list an item in `deps`.
    pub(crate) dependent_items: Csr,
    /// Per gate: how many of its prerequisites (needs + dep items) are not yet passed.
    pub(crate) indegree: Vec<u32>,
    /// Per gate: length of the longest chain of gates that wait for it, itself included.
    /// Higher runs first, so the critical path of a pyramid starts early.
    pub(crate) height: Vec<u32>,
}

impl PlanGraph {
    pub(crate) fn new(plan: &Plan) -> Self {
        let n = plan.gates.len();
        let mut need_edges = Vec::new();
        for (g, gate) in plan.gates.iter().enumerate() {
            for need in &gate.needs {
                need_edges.push((need.0, g as u32));
            }
        }
        let mut dep_edges = Vec::new();
        for (i, item) in plan.items.iter().enumerate() {
            for dep in &item.deps {
                dep_edges.push((dep.0, i as u32));
            }
        }
        let needed_by = Csr::build(n, &need_edges);
        let dependent_items = Csr::build(plan.items.len(), &dep_edges);
        let indegree = plan
            .gates
            .iter()
            .map(|g| {
                let item_deps = g.item.map_or(0, |i| plan.item(i).deps.len());
                (g.needs.len() + item_deps) as u32
            })
            .collect();
        let height = heights(plan, &needed_by, &dependent_items);
        Self {
            needed_by,
            dependent_items,
            indegree,
            height,
        }
    }

    /// Gates that wait for `gate` through `needs`.
    pub(crate) fn needed_by(&self, gate: GateIdx) -> impl Iterator<Item = GateIdx> + '_ {
        self.needed_by.of(gate.ix()).iter().map(|&g| GateIdx(g))
    }

    /// Items whose `deps` list `item`.
    pub(crate) fn dependent_items(&self, item: ItemIdx) -> impl Iterator<Item = ItemIdx> + '_ {
        self.dependent_items
            .of(item.ix())
            .iter()
            .map(|&i| ItemIdx(i))
    }
}

/// Critical-path heights over the combined graph (gates plus one barrier node per item),
/// computed in reverse topological order (Kahn). The plan is validated acyclic; should a
/// node never be reached, it keeps height 1, which only affects priority.
fn heights(plan: &Plan, needed_by: &Csr, dependent_items: &Csr) -> Vec<u32> {
    let n = plan.gates.len();
    let m = plan.items.len();
    // Node ids: gates 0..n, item barriers n..n+m. Edge u -> v means v waits for u.
    let succ = |u: usize, out: &mut Vec<usize>| {
        out.clear();
        if u < n {
            out.extend(needed_by.of(u).iter().map(|&g| g as usize));
            if let Some(item) = plan.gates[u].item {
                out.push(n + item.ix());
            }
        } else {
            for &dep_item in dependent_items.of(u - n) {
                out.extend(plan.items[dep_item as usize].gates.iter().map(|g| g.ix()));
            }
        }
    };
    let mut indeg = vec![0u32; n + m];
    let mut buf = Vec::new();
    for u in 0..n + m {
        succ(u, &mut buf);
        for &v in &buf {
            indeg[v] += 1;
        }
    }
    let mut order = Vec::with_capacity(n + m);
    let mut stack: Vec<usize> = (0..n + m).filter(|&u| indeg[u] == 0).collect();
    while let Some(u) = stack.pop() {
        order.push(u);
        succ(u, &mut buf);
        for &v in &buf {
            indeg[v] -= 1;
            if indeg[v] == 0 {
                stack.push(v);
            }
        }
    }
    let mut h = vec![0u32; n + m];
    for &u in order.iter().rev() {
        succ(u, &mut buf);
        let below = buf.iter().map(|&v| h[v]).max().unwrap_or(0);
        // Barrier nodes are not gates: they add no length to the chain.
        h[u] = if u < n { below + 1 } else { below };
    }
    h.truncate(n);
    for x in &mut h {
        *x = (*x).max(1);
    }
    h
}
