import Foundation
import ServeCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The head's state dir (`--state-dir`): what it must not lose across a restart, namely the
/// deployed config (`config.json`) and, when the head made it, the cluster token (`token`).
///
/// Each file is replaced whole: written to a new temporary file in the same directory, fsync'd,
/// renamed over the old one (rename(2) is atomic), and the directory fsync'd so the rename
/// itself survives a power cut. A crash at any point leaves the old file or the new one, never
/// a mix; what it can leave behind is a temporary file, which is never read and is removed at
/// the next start.
///
/// One head at a time: the directory is locked (flock(2) on `lock`) for the head's lifetime, so
/// a second head on the same dir is refused instead of overwriting the first one's config. The
/// kernel drops the lock when the process dies, however it dies.
public final class StateStore: Sendable {
    public let directory: URL
    /// The open `lock` file; closed (unlocking) with the store.
    private let lockDescriptor: Int32

    static let configName = "config.json"
    static let tokenName = "token"
    static let lockName = "lock"
    /// Temporary files are `.NAME.tmp-PID-RANDOM`: hidden, and never taken for the real thing.
    static let temporaryMarker = ".tmp-"

    /// Creates the directory (mode 0700) if needed, takes its lock, and removes temporary files a
    /// crashed writer left.
    public init(directory: URL) throws(StateStoreError) {
        self.directory = directory
        do {
            try FileManager.default.createDirectory(
                at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw StateStoreError("cannot create the state dir \(directory.path): \(error)")
        }
        let lockPath = directory.appendingPathComponent(Self.lockName).path
        let descriptor = open(lockPath, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw StateStoreError("cannot open \(lockPath): \(Self.errnoText())")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            close(descriptor)
            throw StateStoreError(
                "another serve-head is using the state dir \(directory.path); stop it, or give this one its own --state-dir")
        }
        self.lockDescriptor = descriptor
        self.removeTemporaryFiles()
    }

    deinit {
        close(self.lockDescriptor)
    }

    private func removeTemporaryFiles() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: self.directory.path)) ?? []
        for name in names where name.hasPrefix(".") && name.contains(Self.temporaryMarker) {
            try? FileManager.default.removeItem(at: self.directory.appendingPathComponent(name))
        }
    }

    // MARK: the deployed config

    /// The config the head last deployed, or nil when none was saved (a new state dir). A file
    /// that does not read back as a valid config is an error, not an empty cluster: it was not
    /// written by a head (every write is atomic), and starting empty would lose what it held.
    public func loadConfig() throws(StateStoreError) -> ServeConfig? {
        let url = self.directory.appendingPathComponent(Self.configName)
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        guard let text = String(validating: data, as: UTF8.self) else {
            throw StateStoreError("\(url.path) is not UTF-8 text; it was not written by serve-head. Move it away to start with no applications.")
        }
        do {
            return try ConfigParser.parse(text, knownHandlers: nil)
        } catch {
            throw StateStoreError(
                "\(url.path) does not hold a valid config (\(error)); it was not written by serve-head. Move it away to start with no applications.")
        }
    }

    /// Saves `config` as the one a restarted head deploys (an empty one: no applications).
    public func saveConfig(_ config: ServeConfig) throws(StateStoreError) {
        try self.write(Array((config.jsonValue.jsonString() + "\n").utf8), named: Self.configName, mode: 0o600)
    }

    // MARK: the token

    /// The token a previous start of the head made, if any.
    public func loadToken() -> String? {
        let url = self.directory.appendingPathComponent(Self.tokenName)
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return token.isEmpty ? nil : token
    }

    public func saveToken(_ token: String) throws(StateStoreError) {
        try self.write(Array(token.utf8), named: Self.tokenName, mode: 0o600)
    }

    // MARK: atomic replacement

    /// Replaces `name` with `bytes`: temporary file, fsync, rename, fsync of the directory.
    func write(_ bytes: [UInt8], named name: String, mode: mode_t) throws(StateStoreError) {
        let final = self.directory.appendingPathComponent(name).path
        let temporary = self.directory.appendingPathComponent(
            ".\(name)\(Self.temporaryMarker)\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        let descriptor = open(temporary, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode)
        guard descriptor >= 0 else {
            throw StateStoreError("cannot create \(temporary): \(Self.errnoText())")
        }
        var failure: String?
        do {
            try FileHandle(fileDescriptor: descriptor, closeOnDealloc: false).write(contentsOf: bytes)
        } catch {
            failure = "cannot write \(temporary): \(error)"
        }
        if failure == nil && fsync(descriptor) != 0 { failure = "cannot fsync \(temporary): \(Self.errnoText())" }
        if close(descriptor) != 0 && failure == nil { failure = "cannot close \(temporary): \(Self.errnoText())" }
        if failure == nil && rename(temporary, final) != 0 { failure = "cannot rename \(temporary) to \(final): \(Self.errnoText())" }
        if let failure {
            unlink(temporary)
            throw StateStoreError(failure)
        }
        // The rename is durable once the directory entry is.
        let directory = open(self.directory.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
    }

    private static func errnoText() -> String {
        String(cString: strerror(errno))
    }
}

/// The state dir could not be read or written; says which file and what to do.
public struct StateStoreError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

extension Controller {
    /// The one way the user changes the deployed config: saved to the state dir first, then
    /// deployed. If saving fails nothing changes (the caller reports it). Saving and the
    /// controller taking the config happen in one actor turn, so concurrent deploys persist in
    /// the order they run. What it asks for starts at once, even while holding after a restart.
    func deploy(_ config: ServeConfig, savingTo store: StateStore) async throws(StateStoreError) {
        try store.saveConfig(config)
        self.stopHoldingStarts()
        await self.deploy(config)
    }
}
