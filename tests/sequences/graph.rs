//! Block graphs: nodes, edges, requests, drain and flush, the handover
//! (`inactivate_all` / `activate_all`) and injected driver failures.
//!
//! Part of the sequence interpreter (`ops.rs`): this area's operations,
//! the model's helpers only they use, and the checks of its objects after
//! every step.

use super::*;

impl Run<'_> {
    /// Runs one graph operation (others are not routed here).
    pub(super) fn exec_graph(&mut self, op: Op) {
        match op {
            Op::NewGraph => {
                if self.live_graphs().len() >= MAX_LIVE_GRAPHS
                    || self.graphs.len() >= MAX_GRAPHS_CREATED
                {
                    return;
                }
                let graph = Graph::new(self.ctx_arc(0));
                if !graph.is_empty() || !Arc::ptr_eq(graph.main_context(), &self.ctx_arc(0)) {
                    self.fail("a new graph is not empty or has the wrong main context");
                }
                self.graphs.push(MGraph {
                    handle: Some(graph),
                    nodes: Vec::new(),
                });
            }
            Op::DropGraph { g } => {
                if let Some(g) = pick(&self.live_graphs(), g) {
                    let graph = self.graphs[g].handle.take();
                    self.close_graph_nodes(g);
                    drop(graph);
                }
            }
            Op::CloseAll { g } => {
                if let Some(g) = pick(&self.live_graphs(), g) {
                    self.graphs[g].handle.as_ref().unwrap().close_all();
                    self.close_graph_nodes(g);
                }
            }
            Op::AddNode { g, c, driver, name } => {
                if self.live_nodes().len() >= MAX_LIVE_NODES {
                    return;
                }
                let (Some(g), Some(c)) = (
                    pick(&self.live_graphs(), g),
                    pick(&self.ctxs_with_handle(), c),
                ) else {
                    return;
                };
                let existing: Vec<usize> = self.graphs[g].nodes.clone();
                let fresh = format!("n{}", self.nodes.len());
                let (name, want) = match name % 4 {
                    0 => (String::new(), Err(libc::EINVAL)),
                    1 if !existing.is_empty() => (
                        self.nodes[existing[name as usize / 4 % existing.len()]]
                            .name
                            .clone(),
                        Err(libc::EEXIST),
                    ),
                    2 => ("x\0y".to_string(), Err(libc::EINVAL)),
                    _ => (fresh, Ok(())),
                };
                let recording = driver % 2 == 1;
                let fails: Arc<[AtomicBool; 5]> = Arc::default();
                let drv: Box<dyn Driver> = if recording {
                    Box::new(Recorder {
                        log: self.log.clone(),
                        fails: fails.clone(),
                    })
                } else {
                    Box::new(NullDriver)
                };
                let ctx = self.ctx_arc(c);
                let r = self.graphs[g]
                    .handle
                    .as_ref()
                    .unwrap()
                    .add_node(&name, &ctx, drv);
                drop(ctx);
                if let Some(node) = self.expect("add_node", r, want) {
                    if node.name() != name
                        || node.in_flight() != 0
                        || node.is_inactive()
                        || !node.is_writable()
                    {
                        self.fail(format!("new node has the wrong state: {node:?}"));
                    }
                    self.nodes.push(MNode {
                        graph: g,
                        ctx: c,
                        name,
                        recording,
                        fails,
                        weak: Arc::downgrade(&node),
                        handle: Some(node),
                        in_flight: 0,
                        reserved: 0,
                        inactive: false,
                        handed_over: false,
                        children: Vec::new(),
                        completed: Arc::default(),
                        completed_model: 0,
                        completion_errors: Arc::default(),
                    });
                    let n = self.nodes.len() - 1;
                    self.graphs[g].nodes.push(n);
                }
            }
            Op::Attach { p, q } => {
                let live = self.live_nodes();
                let (Some(p), Some(q)) = (pick(&live, p), pick(&live, q)) else {
                    return;
                };
                let (pn, qn) = (
                    self.nodes[p].handle.clone().unwrap(),
                    self.nodes[q].handle.clone().unwrap(),
                );
                let g = self.nodes[p].graph;
                let r = self.graphs[g].handle.as_ref().unwrap().attach(&pn, &qn);
                let want = if self.nodes[q].graph != g {
                    Err(libc::EINVAL)
                } else if p == q || self.reaches(q, p) {
                    Err(libc::ELOOP)
                } else {
                    if !self.nodes[p].children.contains(&q) {
                        self.nodes[p].children.push(q);
                    }
                    Ok(())
                };
                self.expect("attach", r, want);
            }
            Op::StartReq { n, write } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let kind = if write {
                        RequestKind::Write
                    } else {
                        RequestKind::Read
                    };
                    let r = self.nodes[n].handle.as_ref().unwrap().start_request(kind);
                    let want = if write && self.nodes[n].inactive {
                        Err(libc::EPERM)
                    } else {
                        self.nodes[n].in_flight += 1;
                        Ok(())
                    };
                    self.expect_named("start_request", r, want, Some(n));
                }
            }
            Op::EndReq { n } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let node = &self.nodes[n];
                    if node.in_flight > node.reserved {
                        let r = node.handle.as_ref().unwrap().end_request();
                        self.expect("end_request", r, Ok(()));
                        self.nodes[n].in_flight -= 1;
                    } else if node.in_flight == 0 {
                        let r = node.handle.as_ref().unwrap().end_request();
                        self.expect_named(
                            "end_request with none in flight",
                            r,
                            Err(libc::EINVAL),
                            Some(n),
                        );
                    }
                }
            }
            Op::Complete { n } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    if self.nodes[n].in_flight > self.nodes[n].reserved {
                        self.schedule_completion(n);
                    }
                }
            }
            Op::Submit { n, write } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let kind = if write {
                        RequestKind::Write
                    } else {
                        RequestKind::Read
                    };
                    let r = self.nodes[n].handle.as_ref().unwrap().submit(
                        kind,
                        IoBuf::from(vec![0u8; 512]),
                        0,
                        Box::new(|_, _| panic!("a refused submit must not complete")),
                    );
                    let want = if write && self.nodes[n].inactive {
                        libc::EPERM
                    } else {
                        libc::ENOTSUP
                    };
                    self.expect_named("submit", r, Err(want), Some(n));
                }
            }
            Op::Drain { n } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    self.complete_all_free(n);
                    let c = self.nodes[n].ctx;
                    let want = self.waiter_check(c, None, false);
                    let r = self.nodes[n].handle.as_ref().unwrap().drain();
                    if want.is_ok() && self.nodes[n].in_flight > 0 {
                        self.sim_wait_poll(c);
                    }
                    self.expect_named("drain", r, want, Some(n));
                    if want.is_ok() && self.nodes[n].handle.as_ref().unwrap().in_flight() != 0 {
                        self.fail("drain returned with requests in flight");
                    }
                }
            }
            Op::Flush { n } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let c = self.nodes[n].ctx;
                    let mut want = self.waiter_check(c, None, false);
                    let r = self.nodes[n].handle.as_ref().unwrap().flush();
                    if want.is_ok() {
                        self.sim_run_in_home(c);
                        self.note(n, "flush");
                        if self.fails(n, F_FLUSH) {
                            want = Err(FAIL_ERRNO[F_FLUSH]);
                        }
                    }
                    self.expect_named("flush", r, want, Some(n));
                }
            }
            Op::InactivateAll { g } => {
                if let Some(g) = pick(&self.live_graphs(), g) {
                    for n in self.graphs[g].nodes.clone() {
                        if !self.nodes[n].inactive {
                            self.complete_all_free(n);
                        }
                    }
                    let r = self.graphs[g].handle.as_ref().unwrap().inactivate_all();
                    let (want, node) = self.sim_inactivate_all(g);
                    let failed = want.is_err();
                    self.expect_named("inactivate_all", r, want, node);
                    if failed {
                        self.check_handover_consistency(g);
                    }
                }
            }
            Op::ActivateAll { g } => {
                if let Some(g) = pick(&self.live_graphs(), g) {
                    let r = self.graphs[g].handle.as_ref().unwrap().activate_all();
                    let (want, node) = self.sim_activate_all(g);
                    self.expect_named("activate_all", r, want, node);
                }
            }
            Op::SetFail { n, which } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let flag = &self.nodes[n].fails[which as usize % 5];
                    flag.fetch_xor(true, SeqCst);
                }
            }
            _ => unreachable!("not a graph operation: {op:?}"),
        }
    }

    /// Nodes (liveness, in-flight counts, flags, completions, context), each
    /// graph's node list, handover order and lookups, and the exact log of
    /// driver calls.
    pub(super) fn check_graphs(&mut self) {
        for n in 0..self.nodes.len() {
            let m = &self.nodes[n];
            let alive = m.weak.upgrade();
            if alive.is_some() != m.handle.is_some() {
                self.fail(format!(
                    "node '{}' alive {}, model {}",
                    m.name,
                    alive.is_some(),
                    m.handle.is_some()
                ));
            }
            let errors = m.completion_errors.load(SeqCst);
            if errors != 0 {
                self.fail(format!(
                    "node '{}': {errors} completions failed in end_request",
                    m.name
                ));
            }
            let Some(node) = alive else { continue };
            if node.in_flight() != m.in_flight || node.is_inactive() != m.inactive {
                self.fail(format!(
                    "node '{}': in_flight {} inactive {}, model {} {}",
                    m.name,
                    node.in_flight(),
                    node.is_inactive(),
                    m.in_flight,
                    m.inactive
                ));
            }
            if m.completed.load(SeqCst) != m.completed_model {
                self.fail(format!(
                    "node '{}': {} completions ran, model {}",
                    m.name,
                    m.completed.load(SeqCst),
                    m.completed_model
                ));
            }
            if !Arc::ptr_eq(node.context(), &self.ctx_arc(m.ctx)) {
                self.fail(format!("node '{}' has the wrong context", m.name));
            }
        }
        for g in 0..self.graphs.len() {
            let Some(graph) = &self.graphs[g].handle else {
                continue;
            };
            let names = |v: &[usize]| {
                v.iter()
                    .map(|&n| self.nodes[n].name.clone())
                    .collect::<Vec<_>>()
            };
            let got: Vec<String> = graph.nodes().iter().map(|n| n.name().to_string()).collect();
            let want = names(&self.graphs[g].nodes);
            if got != want || graph.len() != want.len() {
                self.fail(format!("graph {g}: nodes {got:?}, model {want:?}"));
            }
            let got: Vec<String> = graph
                .top_down()
                .iter()
                .map(|n| n.name().to_string())
                .collect();
            let want = names(&self.top_down(g));
            if got != want {
                self.fail(format!("graph {g}: top_down {got:?}, model {want:?}"));
            }
            for &n in &self.graphs[g].nodes {
                let found = graph.find(&self.nodes[n].name);
                if !found.is_some_and(|f| Arc::ptr_eq(&f, self.nodes[n].handle.as_ref().unwrap())) {
                    self.fail(format!(
                        "graph {g}: find('{}') is not the node",
                        self.nodes[n].name
                    ));
                }
            }
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        let want = std::mem::take(&mut self.expected_log);
        if log != want {
            self.fail(format!("driver calls {log:?}, model {want:?}"));
        }
    }

    pub(super) fn top_down(&self, g: usize) -> Vec<usize> {
        let all = &self.graphs[g].nodes;
        let mut parents: HashMap<usize, usize> = all.iter().map(|&n| (n, 0)).collect();
        for &n in all {
            for &ch in &self.nodes[n].children {
                *parents.get_mut(&ch).unwrap() += 1;
            }
        }
        let mut ready: VecDeque<usize> = all.iter().copied().filter(|n| parents[n] == 0).collect();
        let mut order = Vec::new();
        while let Some(n) = ready.pop_front() {
            for &ch in &self.nodes[n].children {
                let p = parents.get_mut(&ch).unwrap();
                *p -= 1;
                if *p == 0 {
                    ready.push_back(ch);
                }
            }
            order.push(n);
        }
        order
    }

    pub(super) fn reaches(&self, from: usize, to: usize) -> bool {
        let mut stack = vec![from];
        let mut seen = Vec::new();
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if !seen.contains(&n) {
                seen.push(n);
                stack.extend(self.nodes[n].children.iter().copied());
            }
        }
        false
    }

    pub(super) fn note(&mut self, n: usize, op: &str) {
        if self.nodes[n].recording {
            let name = self.nodes[n].name.clone();
            self.expected_log.push(format!("{op}:{name}"));
        }
    }

    pub(super) fn fails(&self, n: usize, which: usize) -> bool {
        self.nodes[n].recording && self.nodes[n].fails[which].load(SeqCst)
    }

    pub(super) fn members_of(&self, order: &[usize]) -> Vec<usize> {
        let mut m: Vec<usize> = order.iter().map(|&n| self.nodes[n].ctx).collect();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// Model of `Graph::inactivate_all`: the result and the failing node.
    pub(super) fn sim_inactivate_all(&mut self, g: usize) -> (Result<(), i32>, Option<usize>) {
        let order: Vec<usize> = self
            .top_down(g)
            .into_iter()
            .filter(|&n| !self.nodes[n].inactive)
            .collect();
        if let Some(refused) = self.sim_refuse_held(&order) {
            return refused;
        }
        let members = self.members_of(&order);
        members.iter().for_each(|&m| self.ctxs[m].depth += 1);
        let result = self.sim_inactivate_held(&order, &members);
        members.iter().for_each(|&m| self.ctxs[m].depth -= 1);
        result
    }

    /// Model of the handover's up-front refusal: a node context the caller
    /// already holds while an IOThread runs it gives EDEADLK, naming that node.
    pub(super) fn sim_refuse_held(
        &self,
        order: &[usize],
    ) -> Option<(Result<(), i32>, Option<usize>)> {
        order.iter().find_map(|&n| {
            let c = self.nodes[n].ctx;
            (self.ctxs[c].depth > 0 && self.ctxs[c].io_running)
                .then_some((Err(libc::EDEADLK), Some(n)))
        })
    }

    pub(super) fn sim_inactivate_held(
        &mut self,
        order: &[usize],
        members: &[usize],
    ) -> (Result<(), i32>, Option<usize>) {
        for &n in order {
            let c = self.nodes[n].ctx;
            if let Err(e) = self.waiter_check(c, Some(members), false) {
                return (Err(e), Some(n));
            }
            if self.nodes[n].in_flight > 0 {
                self.sim_wait_poll(c);
            }
        }
        for (i, &n) in order.iter().enumerate() {
            let c = self.nodes[n].ctx;
            self.sim_run_in_home(c);
            self.note(n, "flush");
            let mut err = self.fails(n, F_FLUSH).then_some(FAIL_ERRNO[F_FLUSH]);
            if err.is_none() {
                self.sim_run_in_home(c);
                self.note(n, "inactivate");
                if self.fails(n, F_INACTIVATE) {
                    err = Some(FAIL_ERRNO[F_INACTIVATE]);
                } else {
                    self.nodes[n].handed_over = true;
                }
            }
            if let Some(e) = err {
                // Every node already handed over is marked, whatever the
                // permission drops say; the handover error is the one returned.
                for &m in &order[..i] {
                    let _ = self.sim_mark_inactive(m);
                }
                return (Err(e), Some(n));
            }
        }
        // Every node is marked; the first permission-drop failure is returned.
        let mut first = (Ok(()), None);
        for &n in order {
            if let Err(e) = self.sim_mark_inactive(n) {
                if first.0.is_ok() {
                    first = (Err(e), Some(n));
                }
            }
        }
        first
    }

    pub(super) fn sim_mark_inactive(&mut self, n: usize) -> Result<(), i32> {
        self.nodes[n].inactive = true;
        self.note(n, "perm0");
        if self.fails(n, F_DROP) {
            Err(FAIL_ERRNO[F_DROP])
        } else {
            Ok(())
        }
    }

    /// Model of `Graph::activate_all`.
    pub(super) fn sim_activate_all(&mut self, g: usize) -> (Result<(), i32>, Option<usize>) {
        let mut order: Vec<usize> = self
            .top_down(g)
            .into_iter()
            .filter(|&n| self.nodes[n].inactive)
            .collect();
        order.reverse();
        if let Some(refused) = self.sim_refuse_held(&order) {
            return refused;
        }
        let members = self.members_of(&order);
        members.iter().for_each(|&m| self.ctxs[m].depth += 1);
        let mut result = (Ok(()), None);
        for &n in &order {
            self.note(n, "perm1");
            if self.fails(n, F_TAKE) {
                result = (Err(FAIL_ERRNO[F_TAKE]), Some(n));
                break;
            }
            let c = self.nodes[n].ctx;
            if let Err(e) = self.waiter_check(c, Some(&members), false) {
                self.note(n, "perm0");
                result = (Err(e), Some(n));
                break;
            }
            self.sim_run_in_home(c);
            self.note(n, "activate");
            if self.fails(n, F_ACTIVATE) {
                self.note(n, "perm0");
                result = (Err(FAIL_ERRNO[F_ACTIVATE]), Some(n));
                break;
            }
            self.nodes[n].inactive = false;
            self.nodes[n].handed_over = false;
        }
        members.iter().for_each(|&m| self.ctxs[m].depth -= 1);
        result
    }

    // ------------------------------------------------ actions

    /// Queues a BH on the node's context that ends one of its requests.
    pub(super) fn schedule_completion(&mut self, n: usize) {
        let node = self.nodes[n].handle.clone().unwrap();
        let weak = Arc::downgrade(&node);
        let (done, errors) = (
            self.nodes[n].completed.clone(),
            self.nodes[n].completion_errors.clone(),
        );
        node.context().schedule_once(move || {
            if let Some(node) = weak.upgrade() {
                match node.end_request() {
                    Ok(()) => {
                        done.fetch_add(1, SeqCst);
                    }
                    Err(_) => {
                        errors.fetch_add(1, SeqCst);
                    }
                }
            }
        });
        drop(node);
        self.nodes[n].reserved += 1;
        let c = self.nodes[n].ctx;
        self.push(c, Item::Completion(n));
    }

    pub(super) fn complete_all_free(&mut self, n: usize) {
        while self.nodes[n].in_flight > self.nodes[n].reserved {
            self.schedule_completion(n);
        }
    }

    /// The documented promise of a failed handover: each node is either
    /// fully handed over and inactive, or active and not handed over.
    pub(super) fn check_handover_consistency(&self, g: usize) {
        for &n in &self.graphs[g].nodes {
            let node = &self.nodes[n];
            if node.handed_over && !node.inactive {
                stat("LIBRARY: handed over but active after a failed inactivate_all");
                if !self.cfg.check_handover_consistency {
                    continue;
                }
                self.fail(format!(
                    "LIBRARY: after a failed inactivate_all, node '{}' was inactivated by its \
                     driver but is still marked active (activate_all will skip it)",
                    node.name
                ));
            }
        }
    }

    /// A graph closed: its recording drivers were each closed once, in
    /// creation order, and this run lets go of its nodes.
    pub(super) fn close_graph_nodes(&mut self, g: usize) {
        for n in std::mem::take(&mut self.graphs[g].nodes) {
            self.note(n, "close");
            self.nodes[n].handle = None;
        }
    }

    // ------------------------------------------------ checks
}
