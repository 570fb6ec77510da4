import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import Testing

/// The dashboard (issue 15): `GET /api/serve/history` and the page at `GET /` on a real head,
/// the page in headless Chromium.
@Suite("Dashboard", .serialized)
struct DashboardTests {
    /// Two applications of one echo replica each (`beta` with `betaReplicas`), or `alpha` alone.
    static func config(betaReplicas: Int? = 1, alphaReplicas: Int = 1) -> String {
        var yaml = """
            applications:
              - name: alpha
                route_prefix: /alpha
                deployments:
                  - {name: Echo, handler: echo, num_replicas: \(alphaReplicas), ray_actor_options: {num_cpus: 0.1}}

            """
        if let betaReplicas {
            yaml += """
                  - name: beta
                    route_prefix: /beta
                    deployments:
                      - {name: Echo, handler: echo, num_replicas: \(betaReplicas), ray_actor_options: {num_cpus: 0.1}}

                """
        }
        return yaml
    }

    /// A GET without the token (what the page does).
    static func get(_ cluster: TestCluster, _ path: String) async throws -> (Int, HTTPFields, String) {
        let response = try await cluster.admin.send(
            HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: path), timeout: .seconds(30))
        return (response.head.status.code, response.head.headerFields, String(buffer: try await response.body.collect(upTo: 16 << 20)))
    }

    static func history(_ cluster: TestCluster) async throws -> JSONValue {
        let (status, _, body) = try await Self.get(cluster, "/api/serve/history")
        guard status == 200 else { throw HarnessFailure("GET /api/serve/history answered \(status): \(body)") }
        return try JSONValue.parse(body)
    }

    /// Polls the history until `condition` holds (or fails with the last one and the logs).
    @discardableResult
    static func waitForHistory(
        _ cluster: TestCluster, _ what: String, timeout: Duration = .seconds(30), _ condition: (JSONValue) -> Bool
    ) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        var last = JSONValue.null
        while ContinuousClock.now < deadline {
            last = try await Self.history(cluster)
            if condition(last) { return last }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw HarnessFailure("the history never showed \(what); last:\n\(last.jsonString())\n\(cluster.logs)")
    }

    static func samples(_ history: JSONValue, _ key: String) -> [JSONValue] {
        history["deployments"]?[key]?["samples"]?.arrayValue ?? []
    }

    static func decisions(_ history: JSONValue, _ key: String) -> [JSONValue] {
        history["deployments"]?[key]?["decisions"]?.arrayValue ?? []
    }

    @Test("GET /api/serve/history: each deployment's samples and target changes, without the token; a deleted deployment's go")
    func historyEndpoint() async throws {
        try await withCluster(headCPUs: 1) { cluster in
            try await cluster.deploy(Self.config())
            _ = try await cluster.waitForRunning(app: "beta", deployment: "Echo", replicas: 1)
            // Sampled once a second: both deployments' samples reach their running replica.
            var history = try await Self.waitForHistory(cluster, "both deployments running") { history in
                ["alpha/Echo", "beta/Echo"].allSatisfy { Self.samples(history, $0).last?["running"]?.doubleValue == 1 }
            }
            #expect(history["window_s"]?.doubleValue == 900)
            #expect(history["interval_s"]?.doubleValue == 1)
            #expect(history["deployments"]?["alpha/Echo"]?["app"]?.stringValue == "alpha")
            #expect(history["deployments"]?["alpha/Echo"]?["deployment"]?.stringValue == "Echo")
            let now = try #require(history["now"]?.doubleValue)
            // Unix seconds, like the events' times.
            #expect(abs(now - Date().timeIntervalSince1970) < 10)

            // A change of the target is marked with its reason, and the samples follow it.
            try await cluster.deploy(Self.config(alphaReplicas: 2))
            history = try await Self.waitForHistory(cluster, "alpha scaled to 2 with its decision") { history in
                Self.samples(history, "alpha/Echo").last?["running"]?.doubleValue == 2
                    && !Self.decisions(history, "alpha/Echo").isEmpty
            }
            let decision = try #require(Self.decisions(history, "alpha/Echo").last)
            #expect(decision["kind"]?.stringValue == "scale")
            #expect(decision["before"]?.doubleValue == 1)
            #expect(decision["after"]?.doubleValue == 2)
            #expect(decision["reason"]?.stringValue == "config changed num_replicas")
            let samples = Self.samples(history, "alpha/Echo")
            let times = samples.compactMap { $0["t"]?.doubleValue }
            #expect(times.count == samples.count && times == times.sorted(), "\(times)")
            #expect(samples.contains { $0["target"]?.doubleValue == 1 } && samples.last?["target"]?.doubleValue == 2)
            #expect(try #require(times.last) <= (history["now"]?.doubleValue ?? 0))
            // The decision happened between the last sample of target 1 and the first of 2.
            let decidedAt = try #require(decision["t"]?.doubleValue)
            let lastOfOne = try #require(samples.last { $0["target"]?.doubleValue == 1 }?["t"]?.doubleValue)
            let firstOfTwo = try #require(samples.first { $0["target"]?.doubleValue == 2 }?["t"]?.doubleValue)
            #expect(lastOfOne <= decidedAt && decidedAt <= firstOfTwo, "\(lastOfOne) \(decidedAt) \(firstOfTwo)")
            #expect(Self.decisions(history, "beta/Echo").isEmpty)

            // A deleted application's deployments leave the history.
            try await cluster.deploy(Self.config(betaReplicas: nil, alphaReplicas: 2))
            try await Self.waitForHistory(cluster, "beta gone") { $0["deployments"]?["beta/Echo"] == nil }
            #expect(!Self.samples(try await Self.history(cluster), "alpha/Echo").isEmpty)
        }
    }

    @Test("the page: one self-contained HTML document, read without the token; mutating calls still need it")
    func page() async throws {
        try await withCluster(headCPUs: 0) { cluster in
            let (status, fields, body) = try await Self.get(cluster, "/")
            #expect(status == 200)
            #expect(fields[.contentType] == "text/html; charset=utf-8")
            // Nothing may load from elsewhere: the policy allows only the page's own code and origin.
            let policy = try #require(fields[.contentSecurityPolicy])
            #expect(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"))
            #expect(body.hasPrefix("<!doctype html>"))
            for endpoint in ["/api/serve/applications/", "/api/cluster/nodes", "/api/serve/events", "/api/serve/history"] {
                #expect(body.contains("\"\(endpoint)\""), "the page does not read \(endpoint)")
            }
            // No asset from outside: nothing loaded by src= or a stylesheet link (all is inline),
            // and no address elsewhere (but the SVG namespace's name, which loads nothing).
            #expect(!body.contains("src="))
            #expect(!body.contains("rel=\"stylesheet\""))
            let addresses = body.replacingOccurrences(of: "\"http://www.w3.org/2000/svg\"", with: "")
            #expect(!addresses.contains("http://") && !addresses.contains("https://") && !addresses.contains("//cdn"))

            let refused = try await cluster.admin.send(
                HTTPRequest(method: .put, scheme: "http", authority: "127.0.0.1", path: "/api/serve/applications/"),
                body: ByteBuffer(string: Self.config()), timeout: .seconds(30))
            #expect(refused.head.status.code == 401)
            _ = try await refused.body.collect(upTo: 1 << 20)
        }
    }

    @Test("the history keeps only its window (--history-window-s 3): older samples and decisions go, at most window/interval + 1 samples")
    func historyBound() async throws {
        try await withCluster(headCPUs: 1, headArguments: ["--history-window-s", "3"]) { cluster in
            try await cluster.deploy(Self.config(betaReplicas: nil))
            _ = try await cluster.waitForRunning(app: "alpha", deployment: "Echo", replicas: 1)
            // The target changes every 0.6 s for 6 s: a new sample nearly every second, and more
            // decisions than the window holds.
            var decided: Set<Double> = []
            for step in 0..<10 {
                try await cluster.deploy(Self.config(betaReplicas: nil, alphaReplicas: step % 2 == 0 ? 2 : 1))
                try await Task.sleep(for: .milliseconds(600))
                let history = try await Self.history(cluster)
                let now = try #require(history["now"]?.doubleValue)
                let samples = Self.samples(history, "alpha/Echo")
                let times = samples.compactMap { $0["t"]?.doubleValue }
                #expect(samples.count <= 4, "\(samples.count) samples in a window of 3 s: \(times)")
                // Only the first may be older than the window: it holds at the window's start.
                #expect(times.dropFirst().allSatisfy { $0 >= now - 3 }, "now \(now): \(times)")
                let decisions = Self.decisions(history, "alpha/Echo").compactMap { $0["t"]?.doubleValue }
                #expect(decisions.allSatisfy { $0 >= now - 3 }, "now \(now): \(decisions)")
                decided.formUnion(decisions)
            }
            #expect(decided.count >= 8, "the target changes were not all marked: \(decided.sorted())")
            // Once the target holds, its decisions age out of the window and one sample is left.
            try await Self.waitForHistory(cluster, "the decisions aged out, one sample left") { history in
                Self.decisions(history, "alpha/Echo").isEmpty && Self.samples(history, "alpha/Echo").count == 1
            }
        }
    }

    // MARK: the page in a browser

    /// Debian's Chromium (`make test` installs it: APT_PACKAGES).
    static let chromium: String? = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Where the screenshot is left for a person to look at (`.build` is not committed).
    static let screenshot = packageRoot.appendingPathComponent(".build/dashboard/dashboard.png")

    @Test(
        "the page in headless Chromium: both applications, a drawn timeline with the target change marked, no console errors; a screenshot in .build/dashboard",
        .enabled(if: DashboardTests.chromium != nil, "chromium is not installed (make test installs it: APT_PACKAGES in the Makefile)")
    )
    func browser() async throws {
        let chromium = try #require(Self.chromium)
        try await withCluster(headCPUs: 1) { cluster in
            try await cluster.deploy(Self.config())
            _ = try await cluster.waitForRunning(app: "alpha", deployment: "Echo", replicas: 1)
            try await cluster.deploy(Self.config(betaReplicas: 2))
            _ = try await cluster.waitForRunning(app: "beta", deployment: "Echo", replicas: 2)
            try await Self.waitForHistory(cluster, "beta's target change and its two replicas") { history in
                !Self.decisions(history, "beta/Echo").isEmpty && Self.samples(history, "beta/Echo").last?["running"]?.doubleValue == 2
            }
            let url = "http://127.0.0.1:\(cluster.adminPort)/"
            // Chromium runs the page's polls on virtual time, then prints the DOM; the head's
            // answers are real, so the DOM is read again until it shows everything or time is up.
            let deadline = ContinuousClock.now + .seconds(90)
            var dom = ""
            var missing: [String] = []
            repeat {
                let run = try await Self.runChromium(chromium, ["--dump-dom", url])
                let console = run.stderr.split(separator: "\n").filter { $0.contains(":CONSOLE") || $0.contains("Uncaught") }
                // The page logs nothing itself: any console line is an error or a warning.
                #expect(console.isEmpty, "console output from the page:\n\(console.joined(separator: "\n"))")
                if !console.isEmpty { return }
                dom = run.stdout
                missing = Self.missing(in: dom)
                if missing.isEmpty { break }
                try await Task.sleep(for: .milliseconds(500))
            } while ContinuousClock.now < deadline
            #expect(missing.isEmpty, "the rendered page lacks: \(missing)\n\(dom.prefix(20_000))")

            try? FileManager.default.removeItem(at: Self.screenshot)
            try FileManager.default.createDirectory(at: Self.screenshot.deletingLastPathComponent(), withIntermediateDirectories: true)
            let shot = try await Self.runChromium(chromium, ["--screenshot=\(Self.screenshot.path)", "--window-size=1280,1600", url])
            let png = try Data(contentsOf: Self.screenshot)
            #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 10_000, "no screenshot: \(shot.stderr.suffix(2000))")
            print("dashboard screenshot: \(Self.screenshot.path)")
        }
    }

    /// What the rendered DOM should have and does not.
    static func missing(in dom: String) -> [String] {
        var missing: [String] = []
        if !dom.contains("data-error-count=\"0\"") { missing.append("no page errors (data-error-count=\"0\")") }
        if dom.contains("data-renders=\"0\"") || !dom.contains("data-renders=") { missing.append("a render from the API's answers") }
        for app in ["alpha", "beta"] where !dom.contains("data-app=\"\(app)\"") { missing.append("application \(app)") }
        // Each series is a polyline of at least two points (a step held until now).
        let lines = dom.matches(of: /<polyline[^>]*points="([^"]*)"/).map { String($0.1) }
        if !lines.contains(where: { $0.split(separator: " ").count >= 2 }) { missing.append("a timeline polyline with points") }
        if !dom.contains("class=\"decision\"") { missing.append("a marked target change") }
        if !dom.contains("data-node=") { missing.append("the nodes table") }
        if !dom.contains("data-role=\"ingress\"") { missing.append("the ingress deployment marked") }
        if !dom.contains("config changed num_replicas") { missing.append("the event's reason") }
        return missing
    }

    /// Runs headless Chromium on a profile of its own (other test runs may use theirs), up to
    /// 60 s; its output goes to files, so a chatty browser cannot block on a full pipe.
    static func runChromium(_ path: String, _ arguments: [String]) async throws -> (stdout: String, stderr: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-chromium-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let stdoutURL = directory.appendingPathComponent("stdout")
        let stderrURL = directory.appendingPathComponent("stderr")
        for url in [stdoutURL, stderrURL] { _ = FileManager.default.createFile(atPath: url.path, contents: nil) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=\(directory.appendingPathComponent("profile").path)",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
        ] + arguments
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        try process.run()
        let deadline = ContinuousClock.now + .seconds(60)
        while process.isRunning {
            if ContinuousClock.now > deadline {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                throw HarnessFailure("chromium did not finish within 60 s: \(arguments)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let read = { (url: URL) in (try? Data(contentsOf: url)).map { String(decoding: $0, as: UTF8.self) } ?? "" }
        return (read(stdoutURL), read(stderrURL))
    }
}
