//! The dependency graphs of a plan and what validation needs from them: one concrete
//! cycle per strongly connected component, and the level of every node.
//!
//! A [`DepGraph`] has "real" nodes `0..real` (items or gates, printed in cycles and
//! counted in levels) followed by virtual nodes that only connect them (the per-item
//! `start`/`done` nodes of the gate graph). Edges point at what a node waits for.
//! Components are found with petgraph's Kosaraju implementation, which is iterative, so
//! a chain of 100,000 gates cannot overflow the stack; everything here is linear in the
//! size of the graph.

use std::collections::{HashMap, VecDeque};

use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};

/// A directed graph over dense node indices; an edge `a -> b` means `a` waits for `b`.
pub(super) struct DepGraph {
    /// The graph; node `i` has index `i`.
    graph: DiGraph<(), ()>,
}

/// Cycles and levels of a [`DepGraph`].
pub(super) struct Analysis {
    /// One concrete cycle per strongly connected component of more than one node, as
    /// real node indices with the first repeated last.
    pub(super) cycles: Vec<Vec<usize>>,
    /// Level of each real node (0 = waits for no real node, else 1 + the deepest real
    /// node it waits for), when there is no cycle.
    pub(super) levels: Option<Vec<u32>>,
}

impl DepGraph {
    /// A graph of `nodes` nodes without edges, with room for `edges` edges.
    pub(super) fn new(nodes: usize, edges: usize) -> Self {
        let mut graph = DiGraph::with_capacity(nodes, edges);
        for _ in 0..nodes {
            graph.add_node(());
        }
        Self { graph }
    }

    /// Records that `from` waits for `to`.
    pub(super) fn add_edge(&mut self, from: usize, to: usize) {
        self.graph
            .add_edge(NodeIndex::new(from), NodeIndex::new(to), ());
    }

    /// Finds the cycles and, without any, the levels; nodes `0..real` are real.
    pub(super) fn analyze(&self, real: usize) -> Analysis {
        let graph = &self.graph;
        // Components come in reverse topological order: what a node waits for first.
        let sccs = kosaraju_scc(graph);
        let mut component = vec![0_u32; graph.node_count()];
        for (c, scc) in sccs.iter().enumerate() {
            for n in scc {
                component[n.index()] = c as u32;
            }
        }
        let cycles: Vec<Vec<usize>> = sccs
            .iter()
            .filter(|scc| scc.len() > 1)
            .map(|scc| {
                let cycle = self.find_cycle(scc, &component);
                cycle.into_iter().filter(|&n| n < real).collect()
            })
            .collect();
        if !cycles.is_empty() {
            return Analysis {
                cycles,
                levels: None,
            };
        }
        let mut level = vec![0_u32; graph.node_count()];
        for scc in &sccs {
            let n = scc[0];
            level[n.index()] = graph
                .neighbors(n)
                .map(|w| level[w.index()] + u32::from(w.index() < real))
                .max()
                .unwrap_or(0);
        }
        level.truncate(real);
        Analysis {
            cycles,
            levels: Some(level),
        }
    }

    /// The shortest cycle through the lowest-numbered node of `scc` (a real node when
    /// the component has one, since real nodes come first), breadth-first inside the
    /// component; that node is first and last.
    fn find_cycle(&self, scc: &[NodeIndex], component: &[u32]) -> Vec<usize> {
        let start = scc.iter().map(|n| n.index()).min().unwrap_or(0);
        let comp = component[start];
        let mut parent: HashMap<usize, usize> = HashMap::with_capacity(scc.len());
        let mut queue = VecDeque::from([start]);
        while let Some(u) = queue.pop_front() {
            for w in self.graph.neighbors(NodeIndex::new(u)).map(|w| w.index()) {
                if w == start {
                    let mut path = vec![u];
                    let mut at = u;
                    while let Some(&p) = parent.get(&at) {
                        path.push(p);
                        at = p;
                    }
                    path.reverse();
                    path.push(start);
                    return path;
                }
                if component[w] == comp && !parent.contains_key(&w) {
                    parent.insert(w, u);
                    queue.push_back(w);
                }
            }
        }
        // Not reached: every node of a component of two or more nodes is on a cycle.
        vec![start, start]
    }
}

/// Node indices grouped by level, each level in index (plan) order.
pub(super) fn group_levels(levels: &[u32]) -> Vec<Vec<u32>> {
    let depth = levels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut out = vec![Vec::new(); depth];
    for (i, &level) in levels.iter().enumerate() {
        out[level as usize].push(i as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(nodes: usize, edges: &[(usize, usize)]) -> DepGraph {
        let mut g = DepGraph::new(nodes, edges.len());
        for &(a, b) in edges {
            g.add_edge(a, b);
        }
        g
    }

    #[test]
    fn levels_of_a_dag_and_grouping() {
        // 3 waits for 1 and 2, 1 waits for 0.
        let analysis = graph(4, &[(3, 1), (3, 2), (1, 0)]).analyze(4);
        assert!(analysis.cycles.is_empty());
        let levels = analysis.levels.expect("acyclic");
        assert_eq!(levels, vec![0, 1, 0, 2]);
        assert_eq!(group_levels(&levels), vec![vec![0, 2], vec![1], vec![3]]);
        assert_eq!(group_levels(&[]), Vec::<Vec<u32>>::new());
    }

    #[test]
    fn virtual_nodes_do_not_count_as_levels() {
        // Real 0 and 1; 1 waits for virtual 2, which waits for 0.
        let levels = graph(3, &[(1, 2), (2, 0)]).analyze(2).levels;
        assert_eq!(levels, Some(vec![0, 1]));
    }

    #[test]
    fn one_shortest_cycle_per_component_without_virtual_nodes() {
        // Component {0, 1, 4(virtual)}: 0 -> 1 -> 4 -> 0, plus a longer way 1 -> 5 -> 4.
        // Component {2, 3}: 2 -> 3 -> 2. Node 6 waits for 0 but is on no cycle.
        let g = graph(
            7,
            &[
                (0, 1),
                (1, 5),
                (5, 4),
                (1, 4),
                (4, 0),
                (2, 3),
                (3, 2),
                (6, 0),
            ],
        );
        let mut cycles = g.analyze(4).cycles;
        cycles.sort();
        assert_eq!(cycles, vec![vec![0, 1, 0], vec![2, 3, 2]]);
        assert!(g.analyze(4).levels.is_none());
    }

    #[test]
    fn long_chain_does_not_overflow_the_stack() {
        let n = 200_000;
        let edges: Vec<(usize, usize)> = (1..n).map(|i| (i, i - 1)).collect();
        let levels = graph(n, &edges).analyze(n).levels.expect("acyclic");
        assert_eq!(levels[n - 1], (n - 1) as u32);
        let mut cyclic = edges;
        cyclic.push((0, n - 1));
        let cycles = graph(n, &cyclic).analyze(n).cycles;
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].len(), n + 1);
    }
}
