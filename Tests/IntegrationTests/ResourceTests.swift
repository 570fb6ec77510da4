import Foundation
import ServeCore
import Testing

/// Resource allocation through the config file and the real binaries: fractional GPUs, custom
/// resources, accelerator types, OMP_NUM_THREADS, and scale-down that empties whole nodes.
@Suite("Resource allocation", .serialized)
struct ResourceTests {
    private func replicas(_ status: JSONValue, _ app: String, _ deployment: String) -> [JSONValue] {
        status["applications"]?[app]?["deployments"]?[deployment]?["replicas"]?.arrayValue ?? []
    }

    private func nodeID(in nodes: [JSONValue], label: String) -> String? {
        nodes.first { $0["labels"]?["name"]?.stringValue == label }?["node_id"]?.stringValue
    }

    @Test("two num_gpus 0.5 deployments share one GPU; a third stays PENDING naming GPU")
    func fractionalGPUs() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 4, extra: ["--num-gpus", "1"])
            _ = try await cluster.waitForNodes(1)
            func app(_ name: String) -> String {
                """
                  - name: \(name)
                    route_prefix: /\(name)
                    deployments:
                      - name: D
                        handler: env
                        ray_actor_options: {num_cpus: 0.5, num_gpus: 0.5}
                """
            }
            try await cluster.deploy("applications:\n" + app("a") + "\n" + app("b") + "\n" + app("c"))
            let deadline = ContinuousClock.now + .seconds(30)
            var status = JSONValue.null
            var running: [JSONValue] = []
            var pending: [JSONValue] = []
            while ContinuousClock.now < deadline {
                status = try await cluster.status()
                let all = ["a", "b", "c"].flatMap { self.replicas(status, $0, "D") }
                running = all.filter { $0["state"]?.stringValue == "RUNNING" }
                pending = all.filter { $0["state"]?.stringValue == "PENDING" }
                if running.count == 2 && pending.count == 1 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(running.count == 2 && pending.count == 1, "\(status.jsonString())")
            #expect(pending.first?["message"]?.stringValue?.contains("GPU") == true, "\(pending)")
            let stuck = ["a", "b", "c"].first { self.replicas(status, $0, "D").first?["state"]?.stringValue == "PENDING" }
            let message = status["applications"]?[stuck ?? "c"]?["deployments"]?["D"]?["message"]?.stringValue ?? ""
            #expect(message.contains("GPU"), "deployment message: \(message)")
            for app in ["a", "b", "c"] where app != stuck {
                let (code, body, _) = try await cluster.get("/\(app)")
                #expect(code == 200)
                #expect(try JSONValue.parse(body)["CUDA_VISIBLE_DEVICES"]?.stringValue == "0", "\(body)")
            }
        }
    }

    @Test("a custom resource and an accelerator type each land only on the node that has them")
    func customAndAccelerator() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 4, extra: ["--labels", "name=plain"])
            try await cluster.addWorker(cpus: 4, extra: ["--resources", "{\"custom_resource\": 1}", "--labels", "name=custom"])
            try await cluster.addWorker(cpus: 4, extra: ["--num-gpus", "1", "--accelerator-type", "A100", "--labels", "name=a100"])
            let nodes = try await cluster.waitForNodes(3)
            try await cluster.deploy("""
                applications:
                  - name: custom
                    route_prefix: /custom
                    deployments:
                      - name: C
                        handler: env
                        num_replicas: 1
                        ray_actor_options: {num_cpus: 0.1, resources: {custom_resource: 1}}
                  - name: gpu
                    route_prefix: /gpu
                    deployments:
                      - name: G
                        handler: env
                        num_replicas: 1
                        ray_actor_options: {num_cpus: 0.1, num_gpus: 1, accelerator_type: A100}
                """)
            _ = try await cluster.waitForRunning(app: "custom", deployment: "C", replicas: 1)
            let status = try await cluster.waitForRunning(app: "gpu", deployment: "G", replicas: 1)
            #expect(self.replicas(status, "custom", "C").first?["node_id"]?.stringValue == self.nodeID(in: nodes, label: "custom"))
            #expect(self.replicas(status, "gpu", "G").first?["node_id"]?.stringValue == self.nodeID(in: nodes, label: "a100"))
            let (_, body, _) = try await cluster.get("/gpu")
            let value = try JSONValue.parse(body)
            #expect(value["CUDA_VISIBLE_DEVICES"]?.stringValue == "0")
            #expect(value["resources"]?["accelerator_type:A100"]?.doubleValue == 1)
        }
    }

    @Test("OMP_NUM_THREADS follows num_cpus (1 when unset) unless env_vars sets it, and OpenBLAS obeys it")
    func ompNumThreads() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 8)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: two
                    route_prefix: /two
                    deployments:
                      - {name: D, handler: env, ray_actor_options: {num_cpus: 2}}
                  - name: unset
                    route_prefix: /unset
                    deployments:
                      - {name: D, handler: env}
                  - name: forced
                    route_prefix: /forced
                    deployments:
                      - {name: D, handler: env, ray_actor_options: {num_cpus: 2, runtime_env: {env_vars: {OMP_NUM_THREADS: "3"}}}}
                  - name: blas
                    route_prefix: /blas
                    deployments:
                      - name: D
                        command: ["python3", "threads.py"]
                        ray_actor_options: {num_cpus: 2, runtime_env: {working_dir: examples}}
                """)
            for app in ["two", "unset", "forced", "blas"] {
                _ = try await cluster.waitForRunning(app: app, deployment: "D", replicas: 1)
            }
            let expected = ["two": "2", "unset": "1", "forced": "3"]
            for (app, threads) in expected {
                let (_, body, _) = try await cluster.get("/\(app)")
                let value = try JSONValue.parse(body)
                #expect(value["OMP_NUM_THREADS"]?.stringValue == threads, "\(app): \(body)")
            }
            let (_, unsetBody, _) = try await cluster.get("/unset")
            #expect(try JSONValue.parse(unsetBody)["thread_budget"]?.doubleValue == 1)
            let (_, twoBody, _) = try await cluster.get("/two")
            #expect(try JSONValue.parse(twoBody)["thread_budget"]?.doubleValue == 2)
            let (code, blas, _) = try await cluster.get("/blas")
            #expect(code == 200, "\(blas)")
            let value = try JSONValue.parse(blas)
            #expect(value["OMP_NUM_THREADS"]?.stringValue == "2")
            let pools = value["pools"]?.arrayValue ?? []
            #expect(!pools.isEmpty, "numpy reported no thread pool: \(blas)")
            for pool in pools {
                #expect(pool["num_threads"]?.doubleValue == 2, "\(blas)")
            }
        }
    }

    @Test("scale-down empties the least-populated node first")
    func scaleDownDrainsLoneNode() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 3, extra: ["--labels", "name=three"])
            try await cluster.addWorker(cpus: 4, extra: ["--labels", "name=four"])
            let nodes = try await cluster.waitForNodes(2)
            func config(_ count: Int) -> String {
                """
                applications:
                  - name: app
                    route_prefix: /app
                    deployments:
                      - {name: D, handler: echo, num_replicas: \(count)}
                """
            }
            try await cluster.deploy(config(4))
            let before = try await cluster.waitForRunning(app: "app", deployment: "D", replicas: 4)
            let placements = self.replicas(before, "app", "D").compactMap { $0["node_id"]?.stringValue }
            let lone = try #require(self.nodeID(in: nodes, label: "four"))
            let packed = try #require(self.nodeID(in: nodes, label: "three"))
            #expect(placements.filter { $0 == packed }.count == 3, "packing fills one node first: \(placements)")
            #expect(placements.filter { $0 == lone }.count == 1)
            try await cluster.deploy(config(3))
            let after = try await cluster.waitForRunning(app: "app", deployment: "D", replicas: 3)
            #expect(self.replicas(after, "app", "D").allSatisfy { $0["node_id"]?.stringValue == packed })
            let (_, nodesBody) = try await cluster.adminCall(.get, "/api/cluster/nodes")
            let loneNode = (try JSONValue.parse(nodesBody))["nodes"]?.arrayValue?.first { $0["node_id"]?.stringValue == lone }
            #expect(loneNode?["replicas"]?.arrayValue?.isEmpty == true)
        }
    }

    @Test("placement_strategy SPREAD puts a deployment's replicas on different nodes; max_replicas_per_node caps them")
    func spread() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 4)
            try await cluster.addWorker(cpus: 4)
            _ = try await cluster.waitForNodes(2)
            try await cluster.deploy("""
                applications:
                  - name: spread
                    route_prefix: /spread
                    deployments:
                      - {name: S, handler: echo, num_replicas: 2, placement_strategy: SPREAD}
                  - name: capped
                    route_prefix: /capped
                    deployments:
                      - {name: C, handler: echo, num_replicas: 3, max_replicas_per_node: 1, ray_actor_options: {num_cpus: 0.5}}
                """)
            let status = try await cluster.waitForRunning(app: "spread", deployment: "S", replicas: 2)
            let nodes = Set(self.replicas(status, "spread", "S").compactMap { $0["node_id"]?.stringValue })
            #expect(nodes.count == 2)
            let deadline = ContinuousClock.now + .seconds(20)
            var capped: [JSONValue] = []
            while ContinuousClock.now < deadline {
                capped = self.replicas(try await cluster.status(), "capped", "C")
                if capped.filter({ $0["state"]?.stringValue == "RUNNING" }).count == 2 && capped.count == 3 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(capped.filter { $0["state"]?.stringValue == "RUNNING" }.count == 2, "\(capped)")
            let pending = capped.first { $0["state"]?.stringValue == "PENDING" }
            #expect(pending?["message"]?.stringValue?.contains("max_replicas_per_node") == true, "\(capped)")
        }
    }

    @Test("a replica PENDING for a GPU starts, with its GPU id, when a GPU node joins")
    func pendingUntilGPUNodeJoins() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: gpu
                    route_prefix: /gpu
                    deployments:
                      - {name: G, handler: env, ray_actor_options: {num_cpus: 1, num_gpus: 1}}
                """)
            var status = JSONValue.null
            let pendingDeadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < pendingDeadline {
                status = try await cluster.status()
                if self.replicas(status, "gpu", "G").first?["state"]?.stringValue == "PENDING" { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(self.replicas(status, "gpu", "G").first?["state"]?.stringValue == "PENDING", "\(status.jsonString())")
            try await cluster.addWorker(cpus: 2, extra: ["--num-gpus", "2"])
            _ = try await cluster.waitForRunning(app: "gpu", deployment: "G", replicas: 1)
            let (_, body, _) = try await cluster.get("/gpu")
            #expect(try JSONValue.parse(body)["CUDA_VISIBLE_DEVICES"]?.stringValue == "0", "\(body)")
        }
    }
}
