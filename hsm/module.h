// Loading a PKCS#11 module with p11-kit, one connection at a time.
//
// For p11-kit-client.so every p11_kit_module_load() returns a fresh function
// list with its own RPC transport (p11-kit/client.c), so each Connect() is
// its own connection to `p11-kit server` and its own `p11-kit-remote`
// process on the HSM side: that is how throughput scales across the boundary
// (docs/architecture.md, "The HSM boundary as it behaves", cost per call).
// For an in-process module p11-kit shares one instance between loads.
//
// Thread-safety: Connect() may be called from any thread.
#ifndef SIGNET_HSM_MODULE_H_
#define SIGNET_HSM_MODULE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "hsm/pkcs11_api.h"

namespace signet::hsm {

// A connection to a module: the PKCS#11 calls, plus how to let go of it.
class ModuleConnection : public Pkcs11Api {
 public:
  // Lets go of the connection without C_Finalize: a call may be stuck in it
  // (a stalled HSM blocks C_Finalize too: docs/architecture.md, "The HSM
  // boundary as it behaves"). The connection's resources leak on purpose;
  // the destructor then does nothing.
  virtual void Abandon() = 0;
};

// Opens module connections. An interface so the session pool can be tested
// with fake connections.
class Connector {
 public:
  virtual ~Connector() = default;
  // Loads and initializes one connection. UNAVAILABLE when the module cannot
  // be initialized; FAILED_PRECONDITION when it cannot be loaded at all.
  virtual absl::StatusOr<std::unique_ptr<ModuleConnection>> Connect() = 0;
};

struct ModuleOptions {
  // Path of the PKCS#11 module. p11-kit-client.so is the process boundary.
  std::string module_path;
  // "unix:path=/abs/socket"; exported as P11_KIT_SERVER_ADDRESS when set.
  std::string p11_kit_server_address;
  // Allows a module other than p11-kit-client.so, which then runs inside
  // signetd and maps key material into its address space.
  bool insecure_in_process_module = false;
};

// True if `module_path` names p11-kit's RPC client module.
bool IsP11KitClientModule(absl::string_view module_path);

class P11KitConnector : public Connector {
 public:
  // FAILED_PRECONDITION when the module is not p11-kit-client.so and
  // insecure_in_process_module is false, or when the path does not exist.
  // Sets P11_KIT_SERVER_ADDRESS in the environment (call before threads),
  // and ignores SIGPIPE process-wide: when the HSM process dies, the
  // client's next write to its socket would otherwise kill this process.
  static absl::StatusOr<std::unique_ptr<P11KitConnector>> Create(
      const ModuleOptions& options);

  absl::StatusOr<std::unique_ptr<ModuleConnection>> Connect() override;

  bool in_process() const { return in_process_; }

 private:
  P11KitConnector(std::string module_path, bool in_process)
      : module_path_(std::move(module_path)), in_process_(in_process) {}

  std::string module_path_;
  bool in_process_;
};

}  // namespace signet::hsm

#endif  // SIGNET_HSM_MODULE_H_
