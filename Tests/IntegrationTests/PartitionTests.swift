import Foundation
import ServeCore
import Testing

/// A small network of Linux network namespaces: one "switch" namespace holding a bridge, and
/// hosts each in its own namespace with a veth link to the bridge (so a host's link can be cut
/// and healed, and its traffic dropped by nftables, without touching the machine's own
/// network). Every packet to a namespace address is sent from inside a namespace.
final class NetnsLab: @unchecked Sendable {
    let prefix: String
    private(set) var namespaces: [String] = []

    static let ip = "/usr/sbin/ip"
    static let nft = "/usr/sbin/nft"

    /// Why the lab cannot run here, or nil when it can (checked once, by making a namespace).
    static let unavailableReason: String? = {
        if getuid() != 0 { return "network namespaces need root (CI runs as root)" }
        for tool in [NetnsLab.ip, NetnsLab.nft, "/usr/bin/curl"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            return "\(tool) is missing (make deps installs iproute2, nftables and curl)"
        }
        let probe = "s7-probe-\(getpid())"
        guard let (status, _) = try? NetnsLab.run([NetnsLab.ip, "netns", "add", probe]), status == 0 else {
            return "this machine does not allow creating network namespaces"
        }
        _ = try? NetnsLab.run([NetnsLab.ip, "netns", "del", probe])
        return nil
    }()

    init() throws {
        // Unique per run, short (names show up in interface listings).
        self.prefix = "s7-\(getpid() % 100_000)-\(String(UInt16.random(in: 0...UInt16.max), radix: 16))"
        try self.addNamespace("sw")
        try self.sh(Self.ip, "-n", self.ns("sw"), "link", "add", "br0", "type", "bridge")
        try self.sh(Self.ip, "-n", self.ns("sw"), "link", "set", "br0", "up")
    }

    func ns(_ host: String) -> String { "\(self.prefix)-\(host)" }

    private func addNamespace(_ host: String) throws {
        try self.sh(Self.ip, "netns", "add", self.ns(host))
        self.namespaces.append(self.ns(host))
        try self.sh(Self.ip, "-n", self.ns(host), "link", "set", "lo", "up")
    }

    /// A host at `address` (/24) on the bridge.
    func addHost(_ host: String, address: String) throws {
        try self.addNamespace(host)
        let port = "p-\(host)"
        try self.sh(
            Self.ip,
            "-n",
            self.ns(host),
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.ns("sw")
        )
        try self.sh(Self.ip, "-n", self.ns("sw"), "link", "set", port, "master", "br0")
        try self.sh(Self.ip, "-n", self.ns("sw"), "link", "set", port, "up")
        try self.sh(Self.ip, "-n", self.ns(host), "addr", "add", "\(address)/24", "dev", "eth0")
        try self.sh(Self.ip, "-n", self.ns(host), "link", "set", "eth0", "up")
    }

    /// Cuts the host off (its end of the link goes down: nothing in or out).
    func cut(_ host: String) throws {
        try self.sh(Self.ip, "-n", self.ns(host), "link", "set", "eth0", "down")
    }

    func heal(_ host: String) throws {
        try self.sh(Self.ip, "-n", self.ns(host), "link", "set", "eth0", "up")
    }

    /// Drops `percent` % of the host's packets at random, each way (nftables `numgen random`;
    /// this kernel has no netem).
    func dropRandomly(_ host: String, percent: Int) throws {
        let ns = self.ns(host)
        try self.sh(Self.ip, "netns", "exec", ns, Self.nft, "add", "table", "inet", "loss")
        for (chain, hook, match) in [("in", "input", "iifname"), ("out", "output", "oifname")] {
            try self.sh(
                Self.ip,
                "netns",
                "exec",
                ns,
                Self.nft,
                "add",
                "chain",
                "inet",
                "loss",
                chain,
                "{ type filter hook \(hook) priority 0; policy accept; }"
            )
            try self.sh(
                Self.ip,
                "netns",
                "exec",
                ns,
                Self.nft,
                "add",
                "rule",
                "inet",
                "loss",
                chain,
                match,
                "eth0",
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                String(percent),
                "drop"
            )
        }
    }

    /// Drops everything the host sends (a one-way partition: it still hears the others).
    func dropOutgoing(_ host: String) throws {
        let ns = self.ns(host)
        try self.sh(Self.ip, "netns", "exec", ns, Self.nft, "add", "table", "inet", "loss")
        try self.sh(
            Self.ip, "netns", "exec", ns, Self.nft, "add", "chain", "inet", "loss", "out",
            "{ type filter hook output priority 0; policy accept; }"
        )
        try self.sh(Self.ip, "netns", "exec", ns, Self.nft, "add", "rule", "inet", "loss", "out", "oifname", "eth0", "drop")
    }

    func stopDropping(_ host: String) throws {
        try self.sh(Self.ip, "netns", "exec", self.ns(host), Self.nft, "delete", "table", "inet", "loss")
    }

    /// Runs a command inside the host's namespace; returns its status and output.
    @discardableResult
    func run(in host: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        try Self.run([Self.ip, "netns", "exec", self.ns(host)] + arguments)
    }

    /// Removes every namespace (their links and any process's sockets go with them).
    func destroy() {
        for ns in self.namespaces.reversed() { _ = try? Self.run([Self.ip, "netns", "del", ns]) }
        self.namespaces.removeAll()
    }

    deinit { self.destroy() }

    @discardableResult
    private func sh(_ arguments: String...) throws -> String {
        let (status, output) = try Self.run(arguments)
        guard status == 0 else {
            throw HarnessFailure("\(arguments.joined(separator: " ")) failed (\(status)): \(output)")
        }
        return output
    }

    static func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}

/// A head and workers in separate network namespaces, reached through curl run inside the
/// head's namespace.
final class NamespacedCluster: @unchecked Sendable {
    let lab: NetnsLab
    let token = "netns-token-\(UInt32.random(in: 0...UInt32.max))"
    let stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "serve-netns-\(UUID().uuidString)"
    )
    let head: Child
    var workers: [String: Child] = [:]
    static let headAddress = "10.77.0.1"

    init(lab: NetnsLab, heartbeatTimeout: Double) async throws {
        self.lab = lab
        try lab.addHost("head", address: Self.headAddress)
        self.head = try Child(
            "serve-head",
            [
                "--host", Self.headAddress, "--port", "6380", "--http-host", "127.0.0.1", "--http-port", "8000",
                "--admin-port", "8265", "--num-cpus", "0", "--token", self.token, "--state-dir",
                self.stateDirectory.path,
                "--heartbeat-timeout-s", String(heartbeatTimeout),
            ],
            namespace: lab.ns("head")
        )
        _ = try await self.head.waitForOutput(matching: "admin API")
    }

    /// A worker on its own host; returns its node id.
    func addWorker(_ host: String, address: String) async throws -> String {
        try self.lab.addHost(host, address: address)
        let nodeID = "node-\(host)"
        self.workers[host] = try Child(
            "serve-worker",
            [
                "--address", "\(Self.headAddress):6380", "--num-cpus", "2", "--num-gpus", "0", "--token", self.token,
                "--node-id", nodeID, "--head-timeout-s", "1",
            ],
            namespace: self.lab.ns(host)
        )
        return nodeID
    }

    /// curl inside the head's namespace: (status, body).
    func curl(_ url: String, _ extra: [String] = []) throws -> (Int, String) {
        let (_, output) = try self.lab.run(
            in: "head",
            ["curl", "-sS", "-m", "20", "-w", "\n%{http_code}"] + extra + [url]
        )
        guard let newline = output.lastIndex(of: "\n"), let code = Int(output[output.index(after: newline)...]) else {
            return (0, output)
        }
        return (code, String(output[..<newline]))
    }

    func admin(_ path: String, method: String = "GET", body: String? = nil) throws -> (Int, String) {
        var extra = ["-X", method, "-H", "Authorization: Bearer \(self.token)"]
        if let body { extra += ["--data-binary", body, "-H", "content-type: application/yaml"] }
        return try self.curl("http://127.0.0.1:8265\(path)", extra)
    }

    func get(_ path: String) throws -> (Int, String) {
        try self.curl("http://127.0.0.1:8000\(path)")
    }

    func nodeStates() throws -> [String: String] {
        let (_, body) = try self.admin("/api/cluster/nodes")
        let nodes = (try? JSONValue.parse(body))?["nodes"]?.arrayValue ?? []
        return Dictionary(
            uniqueKeysWithValues: nodes.compactMap { node in
                node["node_id"]?.stringValue.map { ($0, node["state"]?.stringValue ?? "") }
            }
        )
    }

    func replicas(_ app: String, _ deployment: String) throws -> [(id: String, node: String, state: String)] {
        let (_, body) = try self.admin("/api/serve/applications/")
        return FailureTests.replicas((try? JSONValue.parse(body)) ?? .null, app, deployment)
    }

    var logs: String {
        (["--- serve-head ---\n" + self.head.output]
            + self.workers.sorted { $0.key < $1.key }.map { "--- serve-worker \($0.key) ---\n" + $0.value.output })
            .joined(separator: "\n")
    }

    func eventually(_ what: String, timeout: Duration, _ condition: () throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try condition() { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw HarnessFailure("not within \(timeout): \(what)\n\(self.logs)")
    }

    func stop() async {
        for worker in self.workers.values { worker.signal(SIGKILL) }
        self.head.signal(SIGKILL)
        for worker in self.workers.values { _ = try? await worker.waitForExit(timeout: .seconds(5)) }
        _ = try? await self.head.waitForExit(timeout: .seconds(5))
        try? FileManager.default.removeItem(at: self.stateDirectory)
    }
}

/// Multi-host failures in Linux network namespaces (issue 7 item 6): the head in one, workers
/// in others, joined by veth links to a bridge.
@Suite(
    "Partitions (network namespaces)",
    .serialized,
    .enabled(if: NetnsLab.unavailableReason == nil, "\(NetnsLab.unavailableReason ?? "")")
)
struct PartitionTests {
    /// Runs `body` with a lab and a head, and removes every namespace afterwards, failing or not.
    func withLab(heartbeatTimeout: Double, _ body: (NamespacedCluster) async throws -> Void) async throws {
        let lab = try NetnsLab()
        defer { lab.destroy() }
        let cluster = try await NamespacedCluster(lab: lab, heartbeatTimeout: heartbeatTimeout)
        do {
            try await body(cluster)
        } catch {
            print(cluster.logs)
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    static let config = """
        applications:
          - name: hello
            route_prefix: /hello
            deployments:
              - name: Hello
                handler: echo
                num_replicas: 2
                placement_strategy: SPREAD
                ray_actor_options: {num_cpus: 1}
        """

    @Test(
        "a worker cut off from the head is declared DEAD and replaced; when the link heals it registers again and its stale replica is stopped"
    )
    func cutAndHeal() async throws {
        try await withLab(heartbeatTimeout: 2) { cluster in
            let cutOff = try await cluster.addWorker("w1", address: "10.77.0.2")
            let other = try await cluster.addWorker("w2", address: "10.77.0.3")
            try await cluster.eventually("two workers ALIVE", timeout: .seconds(60)) {
                try cluster.nodeStates().values.filter { $0 == "ALIVE" }.count == 2
            }
            let (deployed, answer) = try cluster.admin("/api/serve/applications/", method: "PUT", body: Self.config)
            #expect(deployed == 200, "\(answer)")
            try await cluster.eventually("one RUNNING replica per worker", timeout: .seconds(60)) {
                let replicas = try cluster.replicas("hello", "Hello")
                return replicas.count == 2 && replicas.allSatisfy { $0.state == "RUNNING" }
                    && Set(replicas.map(\.node)) == [cutOff, other]
            }
            let stale = try #require(try cluster.replicas("hello", "Hello").first { $0.node == cutOff }?.id)
            #expect(try cluster.get("/hello/before").0 == 200)

            try cluster.lab.cut("w1")
            let cutAt = ContinuousClock.now
            try await cluster.eventually(
                "the cut-off worker DEAD and both replicas on the other",
                timeout: .seconds(20)
            ) {
                let replicas = try cluster.replicas("hello", "Hello")
                return try cluster.nodeStates()[cutOff] == "DEAD"
                    && replicas.count == 2 && replicas.allSatisfy { $0.node == other && $0.state == "RUNNING" }
            }
            let replacedIn = ContinuousClock.now - cutAt
            #expect(replacedIn < .seconds(2 + 5), "declared dead and replaced in \(replacedIn)")
            for _ in 0..<10 {
                let (code, body) = try cluster.get("/hello/during")
                #expect(code == 200, "\(body)")
            }

            try cluster.lab.heal("w1")
            try await cluster.eventually("the healed worker ALIVE again", timeout: .seconds(30)) {
                try cluster.nodeStates()[cutOff] == "ALIVE"
            }
            _ = try await cluster.head.waitForOutput(
                matching: "stopping replica \(stale) on node \(cutOff)",
                timeout: .seconds(10)
            )
            try await cluster.eventually("still two replicas, both on the other worker", timeout: .seconds(10)) {
                let replicas = try cluster.replicas("hello", "Hello")
                return replicas.count == 2 && replicas.allSatisfy { $0.node == other && $0.state == "RUNNING" }
            }
            _ = try await cluster.workers["w1"]!.waitForOutput(matching: "replica stopped", timeout: .seconds(10))
            let (code, body) = try cluster.get("/hello/after")
            #expect(code == 200 && body == "/after", "\(body)")
        }
    }

    /// Sends GETs back to back from inside the head's namespace for `seconds`; prints JSON.
    static let loadScript = """
        import collections, http.client, json, sys, time
        port, seconds, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
        counts, errors, reasons = collections.Counter(), [], []
        end = time.time() + seconds
        conn = None
        while time.time() < end:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
                counts[str(response.status)] += 1
                if response.status != 200:
                    reasons.append(body[:200])
            except Exception as error:
                errors.append(repr(error))
                conn = None
        print(json.dumps({"counts": counts, "errors": errors[:5], "error_count": len(errors), "reasons": reasons[:5]}))
        """

    @Test("with 5% of the head's packets dropped each way at random, every request is answered and nearly all succeed")
    func packetLoss() async throws {
        try await withLab(heartbeatTimeout: 5) { cluster in
            let worker = try await cluster.addWorker("w1", address: "10.77.0.2")
            try await cluster.eventually("the worker ALIVE", timeout: .seconds(60)) {
                try cluster.nodeStates()[worker] == "ALIVE"
            }
            let (deployed, answer) = try cluster.admin(
                "/api/serve/applications/",
                method: "PUT",
                body: Self.config.replacingOccurrences(of: "num_cpus: 1", with: "num_cpus: 0.5")
            )
            #expect(deployed == 200, "\(answer)")
            try await cluster.eventually("two RUNNING replicas", timeout: .seconds(60)) {
                try cluster.replicas("hello", "Hello").filter { $0.state == "RUNNING" }.count == 2
            }
            try cluster.lab.dropRandomly("head", percent: 5)
            let (status, output) = try cluster.lab.run(
                in: "head",
                ["python3", "-c", Self.loadScript, "8000", "8", "/hello/lossy"]
            )
            try cluster.lab.stopDropping("head")
            #expect(status == 0, "\(output)")
            let result = try JSONValue.parse(output.split(separator: "\n").last.map(String.init) ?? "")
            let counts = result["counts"]?.objectValue?.mapValues { $0.doubleValue ?? 0 } ?? [:]
            let total = counts.values.reduce(0, +)
            let ok = counts["200"] ?? 0
            print("packet loss: \(output)")
            #expect(result["error_count"]?.doubleValue == 0, "every request is answered: \(output)")
            #expect(total > 20, "\(output)")
            #expect(ok >= 0.95 * total, "\(output)\n\(cluster.logs)")
            #expect(Set(counts.keys).isSubset(of: ["200", "502", "503"]), "\(output)")
            #expect(try cluster.nodeStates()[worker] == "ALIVE")
            #expect(try cluster.get("/hello/after").0 == 200)
        }
    }

    @Test("a one-way partition (nftables drops all a worker sends): DEAD and replaced, GETs keep being answered, and it rejoins when the rule goes")
    func oneWayPartition() async throws {
        try await withLab(heartbeatTimeout: 2) { cluster in
            let cutOff = try await cluster.addWorker("w1", address: "10.77.0.2")
            let other = try await cluster.addWorker("w2", address: "10.77.0.3")
            try await cluster.eventually("two workers ALIVE", timeout: .seconds(60)) {
                try cluster.nodeStates().values.filter { $0 == "ALIVE" }.count == 2
            }
            let (deployed, answer) = try cluster.admin("/api/serve/applications/", method: "PUT", body: Self.config)
            #expect(deployed == 200, "\(answer)")
            try await cluster.eventually("one RUNNING replica per worker", timeout: .seconds(60)) {
                let replicas = try cluster.replicas("hello", "Hello")
                return replicas.count == 2 && replicas.allSatisfy { $0.state == "RUNNING" }
                    && Set(replicas.map(\.node)) == [cutOff, other]
            }

            try cluster.lab.dropOutgoing("w1")
            // Requests go on while the head has not noticed yet: each is answered (a GET whose
            // replica never answers is sent again elsewhere once the node is declared DEAD).
            let started = ContinuousClock.now
            for _ in 0..<8 {
                let (code, body) = try cluster.get("/hello/during")
                #expect(code == 200, "\(body)")
            }
            #expect(ContinuousClock.now - started < .seconds(15))
            try await cluster.eventually("the silent worker DEAD and both replicas on the other", timeout: .seconds(20)) {
                let replicas = try cluster.replicas("hello", "Hello")
                return try cluster.nodeStates()[cutOff] == "DEAD"
                    && replicas.count == 2 && replicas.allSatisfy { $0.node == other && $0.state == "RUNNING" }
            }

            try cluster.lab.stopDropping("w1")
            try await cluster.eventually("the worker ALIVE again", timeout: .seconds(40)) {
                try cluster.nodeStates()[cutOff] == "ALIVE"
            }
            try await cluster.eventually("still two replicas, both on the other worker", timeout: .seconds(10)) {
                let replicas = try cluster.replicas("hello", "Hello")
                return replicas.count == 2 && replicas.allSatisfy { $0.node == other && $0.state == "RUNNING" }
            }
            #expect(try cluster.get("/hello/after").0 == 200)
        }
    }
}
