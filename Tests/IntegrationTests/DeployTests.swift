import Foundation
import ServeCore
import Testing

/// What `deploy/` holds, checked with what runs without a container engine or a Kubernetes
/// cluster (README "Running on many machines" says what these checks do not cover).
enum DeployFiles {
    static let directory = packageRoot.appendingPathComponent("deploy")

    /// The kubernetes-validate release whose offline schemas the manifests are checked against,
    /// and the Kubernetes version they must be valid for.
    static let kubernetesValidateVersion = "1.37.0"
    static let kubernetesVersion = "1.31.0"

    /// Runs a program found on PATH; its exit status and its output (stdout and stderr).
    static func run(_ argv: [String], timeout: Duration = .seconds(120)) async throws -> (Int32, String) {
        try await ProxyFramingTests.run("/usr/bin/env", argv, timeout: timeout)
    }

    /// Installs kubernetes-validate at the pinned version when it is missing (as the Makefile's
    /// `deps` does), so the check never passes by being skipped.
    static func ensureKubernetesValidate() async throws {
        let probe = "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '\(Self.kubernetesValidateVersion)')"
        if try await Self.run(["python3", "-c", probe]).0 == 0 { return }
        let (status, output) = try await Self.run(
            ["python3", "-m", "pip", "install", "-q", "kubernetes-validate==\(Self.kubernetesValidateVersion)"], timeout: .seconds(300))
        try #require(status == 0, "pip install kubernetes-validate failed: \(output)")
    }

    /// Validates YAML files (every document in each) against the pinned Kubernetes version's
    /// schemas, strictly (unknown fields are errors).
    static func validate(_ paths: [String]) async throws -> (Int32, String) {
        try await Self.ensureKubernetesValidate()
        return try await Self.run(
            ["python3", "-m", "kubernetes_validate", "-k", Self.kubernetesVersion, "--strict"] + paths)
    }

    /// Every YAML document of the files, as JSON values (PyYAML, which kubernetes-validate
    /// brings).
    static func documents(_ paths: [String]) async throws -> [JSONValue] {
        try await Self.ensureKubernetesValidate()
        let script = "import json, sys, yaml\nprint(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))"
        let (status, output) = try await Self.run(["python3", "-c", script] + paths)
        try #require(status == 0, "reading \(paths): \(output)")
        return try #require(try JSONValue.parse(output).arrayValue)
    }
}

@Suite("deploy/docker")
struct DockerfileTests {
    /// deploy/docker/check.py: the Dockerfile's stages, the build stage's packages installed here,
    /// and the built binaries' shared libraries (ldd) all shipped by packages the runtime stage
    /// installs. It checks the release binaries when they are built (what the image holds, with
    /// no Swift library allowed), else the debug ones.
    @Test("the Dockerfile's stages, and every library the binaries load is in the runtime stage")
    func dockerfile() async throws {
        let (status, output) = try await DeployFiles.run(["python3", DeployFiles.directory.appendingPathComponent("docker/check.py").path])
        #expect(status == 0, "\(output)")
        #expect(output.contains("libnghttp2-14"), "\(output)")
    }
}

@Suite("deploy/systemd")
struct SystemdUnitTests {
    static let units = ["serve-head", "serve-worker"]

    func unit(_ name: String) throws -> String {
        try String(contentsOf: DeployFiles.directory.appendingPathComponent("systemd/\(name).service"), encoding: .utf8)
    }

    /// `Key=value` lines of the [Service] section (the last one wins, as systemd reads them).
    func serviceSettings(_ text: String) -> [String: String] {
        var settings: [String: String] = [:]
        var inService = false
        for line in text.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if line.hasPrefix("[") { inService = line == "[Service]" }
            guard inService, !line.hasPrefix("#"), let equals = line.firstIndex(of: "=") else { continue }
            settings[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return settings
    }

    /// `systemd-analyze verify` needs the ExecStart binaries to exist: the units are copied with
    /// /usr/local/bin/ pointing at the built binaries (release when built, else debug).
    @Test("systemd-analyze verify accepts both units, pointed at the built binaries")
    func verify() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-units-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let binaries = try builtBinary("serve-head").deletingLastPathComponent().path
        var paths: [String] = []
        for name in Self.units {
            let text = try self.unit(name).replacingOccurrences(of: "/usr/local/bin/", with: binaries + "/")
            let path = directory.appendingPathComponent("\(name).service").path
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            paths.append(path)
        }
        let (status, output) = try await DeployFiles.run(["systemd-analyze", "verify", "--man=no"] + paths)
        #expect(status == 0, "\(output)")
        // A setting systemd cannot parse is only a warning ("…, ignoring"): none may be printed.
        #expect(output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(output)")
    }

    @Test("restart on failure, the token from an environment file, SIGTERM with a stop timeout above the drain")
    func settings() throws {
        for name in Self.units {
            let settings = self.serviceSettings(try self.unit(name))
            #expect(settings["Restart"] == "on-failure", "\(name)")
            #expect(settings["EnvironmentFile"]?.hasPrefix("/etc/swift-serve/") == true, "\(name)")
            #expect(settings["KillSignal"] == "SIGTERM", "\(name)")
            #expect(settings["User"] != nil && settings["User"] != "root", "\(name)")
            let exec = try #require(settings["ExecStart"], "\(name)")
            #expect(!exec.contains("--token"), "\(name): the token belongs in the environment file, not the command line")
            let flag = name == "serve-worker" ? "--drain-timeout-s" : "--shutdown-timeout-s"
            let words = exec.split(separator: " ").map(String.init)
            let index = try #require(words.firstIndex(of: flag), "\(name) sets \(flag)")
            let drain = try #require(Double(words[index + 1]))
            let stop = try #require(settings["TimeoutStopSec"].flatMap(Double.init), "\(name)")
            #expect(stop > drain, "\(name): TimeoutStopSec \(stop) must be above \(flag) \(drain)")
        }
        let example = try String(contentsOf: DeployFiles.directory.appendingPathComponent("systemd/worker.env.example"), encoding: .utf8)
        #expect(example.contains("SERVE_TOKEN=") && example.contains("SERVE_HEAD_ADDRESS="))
    }
}

@Suite("deploy/kubernetes")
struct KubernetesManifestTests {
    static var manifests: [String] {
        let directory = DeployFiles.directory.appendingPathComponent("kubernetes")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".yaml") }.sorted().map { directory.appendingPathComponent($0).path }
    }

    @Test("every manifest validates against the pinned Kubernetes version's schemas (kubernetes-validate, strict)")
    func schemas() async throws {
        let manifests = Self.manifests
        try #require(manifests.count >= 6, "\(manifests)")
        let (status, output) = try await DeployFiles.validate(manifests)
        #expect(status == 0, "\(output)")
        // One line per resource that passed.
        let documents = try await DeployFiles.documents(manifests)
        #expect(output.components(separatedBy: " passed for resource ").count - 1 == documents.count, "\(output)")
    }

    @Test("a schema error is caught (the check is not vacuous)")
    func catchesErrors() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString).yaml")
        try "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: one, selector: {}, template: {}}\n"
            .write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let (status, output) = try await DeployFiles.validate([file.path])
        #expect(status != 0, "\(output)")
        #expect(output.contains("spec.replicas"), "\(output)")
    }

    func resources(kind: String, _ documents: [JSONValue]) -> [String: JSONValue] {
        Dictionary(
            documents.filter { $0["kind"]?.stringValue == kind }.map { ($0["metadata"]?["name"]?.stringValue ?? "", $0) },
            uniquingKeysWith: { first, _ in first })
    }

    /// The value of `--name=value` or `--name value` in a container's args.
    func flag(_ name: String, in container: JSONValue) -> String? {
        let args = (container["args"]?.arrayValue ?? []).compactMap(\.stringValue)
        if let joined = args.first(where: { $0.hasPrefix(name + "=") }) { return String(joined.dropFirst(name.count + 1)) }
        if let index = args.firstIndex(of: name), index + 1 < args.count { return args[index + 1] }
        return nil
    }

    @Test("one head with its state on a claim, a Service with 6380/8000/8265, workers with the token from the Secret")
    func shape() async throws {
        let documents = try await DeployFiles.documents(Self.manifests)
        let deployments = self.resources(kind: "Deployment", documents)
        let services = self.resources(kind: "Service", documents)
        let head = try #require(deployments["serve-head"])
        #expect(head["spec"]?["replicas"] == 1)
        #expect(head["spec"]?["strategy"]?["type"] == "Recreate")
        let headPod = try #require(head["spec"]?["template"]?["spec"])
        let headContainer = try #require(headPod["containers"]?.arrayValue?.first)
        let stateDir = try #require(self.flag("--state-dir", in: headContainer))
        let claim = try #require(headPod["volumes"]?.arrayValue?.first { $0["persistentVolumeClaim"] != nil })
        let mount = headContainer["volumeMounts"]?.arrayValue?.first { $0["name"] == claim["name"] }
        #expect(mount?["mountPath"]?.stringValue == stateDir)
        let claimName = try #require(claim["persistentVolumeClaim"]?["claimName"]?.stringValue)
        #expect(self.resources(kind: "PersistentVolumeClaim", documents)[claimName] != nil)

        let headService = try #require(services["serve-head"])
        let ports = (headService["spec"]?["ports"]?.arrayValue ?? []).compactMap { $0["port"]?.doubleValue }
        #expect(Set(ports) == [6380, 8000, 8265])

        let secrets = self.resources(kind: "Secret", documents)
        let configMaps = self.resources(kind: "ConfigMap", documents)
        for (name, deployment) in deployments {
            let pod = try #require(deployment["spec"]?["template"]?["spec"])
            for container in pod["containers"]?.arrayValue ?? [] {
                let token = container["env"]?.arrayValue?.first { $0["name"] == "SERVE_TOKEN" }
                let secret = try #require(token?["valueFrom"]?["secretKeyRef"]?["name"]?.stringValue, "\(name)")
                #expect(secrets[secret] != nil, "\(name)")
                #expect(container["readinessProbe"]?["httpGet"]?["path"] == "/-/healthz", "\(name)")
            }
        }
        // The config the head reads comes from the ConfigMap, and parses as the head parses it.
        let configMap = try #require(headPod["volumes"]?.arrayValue?.first { $0["configMap"] != nil }?["configMap"]?["name"]?.stringValue)
        let data = try #require(configMaps[configMap]?["data"])
        let appConfig = try #require(data["serve.yaml"]?.stringValue)
        #expect(throws: Never.self) { try ConfigParser.parse(appConfig, knownHandlers: nil) }
        let clusterConfig = try ClusterConfigParser.parse(try #require(data["cluster.yaml"]?.stringValue))
        guard case .kubernetes(let provider) = clusterConfig.provider else {
            Issue.record("the ConfigMap's cluster.yaml does not use the kubernetes provider")
            return
        }
        // The provider's pods join with the token from the same Secret, through the head's Service.
        let template = try #require(provider.podTemplate["spec"]?["containers"]?.arrayValue?.first)
        let token = template["env"]?.arrayValue?.first { $0["name"] == "SERVE_TOKEN" }
        #expect(secrets[token?["valueFrom"]?["secretKeyRef"]?["name"]?.stringValue ?? provider.tokenSecret] != nil)
        #expect(provider.headAddress.hasPrefix("serve-head."))
        #expect(template["readinessProbe"]?["httpGet"]?["path"] == "/-/healthz")
    }

    /// The Service clients use selects every pod with a proxy; each of those answers its
    /// readiness probe on `/-/healthz`, and a worker's CPU and GPU requests match its flags.
    @Test("the ingress Service selects every node's proxy; workers request what --num-cpus/--num-gpus offer")
    func proxiesAndResources() async throws {
        let documents = try await DeployFiles.documents(Self.manifests)
        let ingress = try #require(self.resources(kind: "Service", documents)["serve"])
        let selector = try #require(ingress["spec"]?["selector"]?.objectValue)
        #expect(ingress["spec"]?["ports"]?.arrayValue?.first?["port"] == 8000)
        for (name, deployment) in self.resources(kind: "Deployment", documents) {
            let labels = deployment["spec"]?["template"]?["metadata"]?["labels"]?.objectValue ?? [:]
            #expect(selector.allSatisfy { labels[$0.key] == $0.value }, "\(name)'s pods are not behind the ingress Service")
        }
        let worker = try #require(self.resources(kind: "Deployment", documents)["serve-worker"])
        let container = try #require(worker["spec"]?["template"]?["spec"]?["containers"]?.arrayValue?.first)
        let cpus = try #require(self.flag("--num-cpus", in: container).flatMap(Double.init))
        let requested = try #require(container["resources"]?["requests"]?["cpu"]?.stringValue)
        #expect(KubernetesQuantity.cpu(requested) == cpus, "requests.cpu \(requested), --num-cpus \(cpus)")
        let gpus = self.flag("--num-gpus", in: container).flatMap(Double.init) ?? 0
        let gpuLimit = container["resources"]?["limits"]?["nvidia.com/gpu"]
        #expect((gpuLimit?.stringValue.flatMap(Double.init) ?? gpuLimit?.doubleValue ?? 0) == gpus)
    }
}

/// Kubernetes CPU quantities as the manifests write them ("2", "500m").
enum KubernetesQuantity {
    static func cpu(_ text: String) -> Double? {
        text.hasSuffix("m") ? Double(text.dropLast()).map { $0 / 1000 } : Double(text)
    }
}
