#include "tests/testing/pki.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "tests/testing/process.h"

namespace signet::testing {
namespace {

constexpr absl::Duration kOpensslTimeout = absl::Seconds(30);
constexpr int kCaDays = 3650;
constexpr int kLeafDays = 365;

// extendedKeyUsage short names a test may ask for (OpenSSL's names).
constexpr absl::string_view kKnownEkus[] = {"clientAuth",   "serverAuth",
                                            "codeSigning",  "emailProtection",
                                            "timeStamping", "OCSPSigning"};

absl::Status ErrnoStatus(int error, absl::string_view what) {
  std::string message =
      absl::StrCat(what, ": ", std::strerror(error), " (errno ", error, ")");
  switch (error) {
    case EPERM:
    case EACCES:
      return absl::PermissionDeniedError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    default:
      return absl::InternalError(message);
  }
}

// mkdir + chmod (the umask may have removed bits). EEXIST is an error unless
// `may_exist`.
absl::Status MakeDir(const std::string& path, mode_t mode, bool may_exist) {
  if (mkdir(path.c_str(), mode) != 0) {
    if (errno != EEXIST || !may_exist) {
      return ErrnoStatus(errno, absl::StrCat("mkdir ", path));
    }
    return absl::OkStatus();
  }
  if (chmod(path.c_str(), mode) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod ", path));
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, absl::string_view contents,
                      const std::string& path) {
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return ErrnoStatus(errno, absl::StrCat("write ", path));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Creates `path` (which must not exist) with exactly `mode`.
absl::Status WriteNewFile(const std::string& path, absl::string_view contents,
                          mode_t mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    return ErrnoStatus(errno, absl::StrCat("create ", path));
  }
  absl::Cleanup close_fd = [fd] { close(fd); };
  if (fchmod(fd, mode) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod ", path));
  }
  return WriteAll(fd, contents, path);
}

// Replaces `path` with `contents` (mode `mode`) through a temporary file in
// the same directory and rename(2), so a reader sees the old file or the new
// one, never half of one.
absl::Status ReplaceFile(const std::string& path, absl::string_view contents,
                         mode_t mode) {
  const std::filesystem::path target(path);
  std::string tmp = (target.parent_path() /
                     absl::StrCat(".", target.filename().string(), ".XXXXXX"))
                        .string();
  int fd = mkstemp(tmp.data());
  if (fd < 0) {
    return ErrnoStatus(errno, absl::StrCat("mkstemp ", tmp));
  }
  bool renamed = false;
  absl::Cleanup cleanup = [fd, &tmp, &renamed] {
    close(fd);
    if (!renamed) {
      unlink(tmp.c_str());
    }
  };
  if (fchmod(fd, mode) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod ", tmp));
  }
  SIGNET_RETURN_IF_ERROR(WriteAll(fd, contents, tmp));
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("rename ", tmp, " to ", path));
  }
  renamed = true;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path));
  }
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

absl::StatusOr<std::string> RandomHex(size_t bytes) {
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus(errno, "open /dev/urandom");
  }
  absl::Cleanup close_fd = [fd] { close(fd); };
  std::string buffer(bytes, '\0');
  size_t done = 0;
  while (done < bytes) {
    ssize_t n = read(fd, buffer.data() + done, bytes - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return ErrnoStatus(n < 0 ? errno : EIO, "read /dev/urandom");
    }
    done += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(buffer);
}

bool HasControlCharacter(absl::string_view value) {
  for (char c : value) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return true;
    }
  }
  return false;
}

// A file name: [A-Za-z0-9._-]+, not starting with '.'.
absl::Status CheckName(absl::string_view what, absl::string_view name) {
  bool ok = !name.empty() && name.size() <= 64 && name[0] != '.';
  for (char c : name) {
    ok = ok && (absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                c == '.' || c == '_' || c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(what,
                     " must be 1 to 64 of [A-Za-z0-9._-], not starting "
                     "with '.', got '",
                     absl::CHexEscape(name), "'"));
  }
  return absl::OkStatus();
}

// A value in an OpenSSL configuration file: '$' would expand a variable,
// '#' start a comment, quotes and backslashes are syntax. A backslash makes
// the next character literal.
std::string ConfValue(absl::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '$' || c == '#' || c == '\\' || c == '"' || c == '\'') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

// A value in `openssl req -subj`: '/' separates attributes, '+' joins
// multi-valued RDNs; a backslash makes the next character literal.
std::string SubjValue(absl::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '/' || c == '+' || c == '\\' || c == '=') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

std::string Join(const std::string& dir, absl::string_view file) {
  return absl::StrCat(dir, "/", file);
}

// "key=value\n" as printed by `openssl x509 -noout -serial` -> value.
std::string ValueAfterEquals(absl::string_view output) {
  absl::string_view line = absl::StripAsciiWhitespace(output);
  size_t eq = line.find('=');
  if (eq != absl::string_view::npos) {
    line = line.substr(eq + 1);
  }
  return std::string(absl::StripAsciiWhitespace(line));
}

}  // namespace

absl::StatusOr<std::string> TestCa::RunOpenssl(std::vector<std::string> args) {
  SpawnOptions options;
  options.argv.reserve(args.size() + 1);
  options.argv.push_back("openssl");
  for (std::string& arg : args) {
    options.argv.push_back(std::move(arg));
  }
  options.unset_env = {"OPENSSL_CONF"};
  SIGNET_ASSIGN_OR_RETURN(RunResult ran, RunProcess(options, kOpensslTimeout));
  if (!ran.succeeded()) {
    return absl::InternalError(absl::StrCat(
        absl::StrJoin(options.argv, " "),
        ran.timed_out ? " timed out"
                      : absl::StrCat(" exited with ", ran.exit_code, " signal ",
                                     ran.term_signal),
        ": ", ran.output));
  }
  return std::move(ran.output);
}

absl::StatusOr<std::unique_ptr<TestCa>> TestCa::Create(absl::string_view dir,
                                                       absl::string_view name) {
  SIGNET_RETURN_IF_ERROR(CheckName("CA name", name));
  absl::string_view parent = dir;
  while (parent.size() > 1 && absl::EndsWith(parent, "/")) {
    parent.remove_suffix(1);
  }
  if (parent.empty() || HasControlCharacter(parent)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CA parent directory must be a non-empty path without control "
        "characters, got '",
        absl::CHexEscape(dir), "'"));
  }
  std::unique_ptr<TestCa> ca(new TestCa());
  ca->dir_ =
      parent == "/" ? absl::StrCat("/", name) : absl::StrCat(parent, "/", name);
  SIGNET_RETURN_IF_ERROR(MakeDir(ca->dir_, 0755, /*may_exist=*/false));
  bool created = false;
  absl::Cleanup remove_on_error = [&created, &ca] {
    if (!created) {
      std::error_code ignored;
      std::filesystem::remove_all(ca->dir_, ignored);
    }
  };
  for (absl::string_view sub : {"certs", "newcerts", "work"}) {
    SIGNET_RETURN_IF_ERROR(MakeDir(Join(ca->dir_, sub), 0755, false));
  }
  ca->config_path_ = Join(ca->dir_, "openssl.cnf");
  ca->key_path_ = Join(ca->dir_, "ca.key");
  ca->cert_path_ = Join(ca->dir_, "ca.pem");
  const std::string d = ConfValue(ca->dir_);
  // clang-format off
  const std::string config = absl::StrCat(
      "# `openssl ca` configuration of a signet::testing::TestCa\n"
      "[ca]\n"
      "default_ca = test_ca\n"
      "\n"
      "[test_ca]\n"
      "database = ", d, "/index.txt\n",
      "new_certs_dir = ", d, "/newcerts\n",
      "serial = ", d, "/serial\n",
      "crlnumber = ", d, "/crlnumber\n",
      "certificate = ", d, "/ca.pem\n",
      "private_key = ", d, "/ca.key\n",
      "default_md = sha256\n"
      "default_days = ", kLeafDays, "\n",
      "default_crl_days = 30\n"
      "policy = policy_any\n"
      "unique_subject = no\n"
      "email_in_dn = no\n"
      "copy_extensions = none\n"
      "crl_extensions = crl_ext\n"
      "\n"
      "[policy_any]\n"
      "organizationName = optional\n"
      "organizationalUnitName = optional\n"
      "commonName = supplied\n"
      "\n"
      "[crl_ext]\n"
      "authorityKeyIdentifier = keyid:always\n"
      "\n"
      "[req]\n"
      "distinguished_name = req_dn\n"
      "string_mask = utf8only\n"
      "\n"
      "[req_dn]\n"
      "commonName = Common Name\n"
      "\n"
      "[v3_ca]\n"
      "basicConstraints = critical, CA:TRUE\n"
      "keyUsage = critical, keyCertSign, cRLSign\n"
      "subjectKeyIdentifier = hash\n");
  // clang-format on
  SIGNET_RETURN_IF_ERROR(WriteNewFile(ca->config_path_, config, 0644));
  SIGNET_RETURN_IF_ERROR(WriteNewFile(Join(ca->dir_, "index.txt"), "", 0644));
  SIGNET_RETURN_IF_ERROR(WriteNewFile(Join(ca->dir_, "index.txt.attr"),
                                      "unique_subject = no\n", 0644));
  for (absl::string_view counter : {"serial", "crlnumber"}) {
    SIGNET_RETURN_IF_ERROR(
        WriteNewFile(Join(ca->dir_, counter), "1000\n", 0644));
  }

  SIGNET_ASSIGN_OR_RETURN(std::string ou, RandomHex(8));
  SIGNET_ASSIGN_OR_RETURN(std::string serial, RandomHex(16));
  SIGNET_RETURN_IF_ERROR(
      RunOpenssl({"genpkey", "-algorithm", "EC", "-pkeyopt",
                  "ec_paramgen_curve:P-256", "-pkeyopt",
                  "ec_param_enc:named_curve", "-out", ca->key_path_})
          .status());
  if (chmod(ca->key_path_.c_str(), 0600) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod ", ca->key_path_));
  }
  SIGNET_RETURN_IF_ERROR(
      RunOpenssl(
          {"req", "-new", "-x509", "-config", ca->config_path_, "-extensions",
           "v3_ca", "-key", ca->key_path_, "-subj",
           absl::StrCat("/O=signet tests/OU=", ou, "/CN=", SubjValue(name)),
           "-days", absl::StrCat(kCaDays), "-sha256", "-set_serial",
           absl::StrCat("0x", serial), "-out", ca->cert_path_})
          .status());
  if (chmod(ca->cert_path_.c_str(), 0644) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod ", ca->cert_path_));
  }
  SIGNET_ASSIGN_OR_RETURN(ca->cert_pem_, ReadFile(ca->cert_path_));
  SIGNET_ASSIGN_OR_RETURN(
      std::string hash,
      RunOpenssl({"x509", "-noout", "-hash", "-in", ca->cert_path_}));
  ca->subject_hash_ = std::string(absl::StripAsciiWhitespace(hash));
  created = true;
  return ca;
}

absl::StatusOr<TestCa::Issued> TestCa::Issue(absl::string_view name,
                                             const CertOptions& options) {
  SIGNET_RETURN_IF_ERROR(CheckName("certificate name", name));
  const std::string cn = options.cn.empty() ? std::string(name) : options.cn;
  std::vector<std::string> alt_names;
  for (const auto& [kind, values] :
       {std::pair<absl::string_view, const std::vector<std::string>*>{
            "URI", &options.uri_sans},
        {"DNS", &options.dns_sans},
        {"IP", &options.ip_sans}}) {
    for (size_t i = 0; i < values->size(); ++i) {
      const std::string& value = (*values)[i];
      if (value.empty() || HasControlCharacter(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat(kind,
                         " SAN must be non-empty without control "
                         "characters, got '",
                         absl::CHexEscape(value), "'"));
      }
      if (kind == "IP") {
        unsigned char address[sizeof(struct in6_addr)];
        if (inet_pton(AF_INET, value.c_str(), address) != 1 &&
            inet_pton(AF_INET6, value.c_str(), address) != 1) {
          return absl::InvalidArgumentError(
              absl::StrCat("IP SAN '", value, "' is not an IP address"));
        }
      }
      alt_names.push_back(
          absl::StrCat(kind, ".", i, " = ", ConfValue(value), "\n"));
    }
  }
  // Control characters are allowed (signetd's refusal of them is under
  // test): the CN goes to `openssl req -subj` in argv, never into a
  // configuration file, where a newline would start another setting.
  if (cn.size() > 64 || cn.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("CN must be at most 64 bytes without a NUL, got '",
                     absl::CHexEscape(cn), "'"));
  }
  std::vector<std::string> ekus;
  if (!options.eku.empty()) {
    for (absl::string_view eku : absl::StrSplit(options.eku, ',')) {
      eku = absl::StripAsciiWhitespace(eku);
      bool known = false;
      for (absl::string_view k : kKnownEkus) {
        known = known || eku == k;
      }
      if (!known) {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown extended key usage '", absl::CHexEscape(eku),
                         "' in '", absl::CHexEscape(options.eku),
                         "'; known: ", absl::StrJoin(kKnownEkus, ", ")));
      }
      ekus.emplace_back(eku);
    }
  }

  Issued issued;
  issued.cert_path = Join(dir_, absl::StrCat("certs/", name, ".pem"));
  issued.key_path = Join(dir_, absl::StrCat("certs/", name, ".key"));
  for (const std::string& path : {issued.cert_path, issued.key_path}) {
    if (access(path.c_str(), F_OK) == 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("this CA already issued '", name, "': ", path));
    }
  }
  const std::string work = Join(dir_, "work");
  const std::string key = Join(work, absl::StrCat(name, ".key"));
  const std::string csr = Join(work, absl::StrCat(name, ".csr"));
  const std::string ext = Join(work, absl::StrCat(name, ".ext"));
  const std::string cert = Join(work, absl::StrCat(name, ".pem"));
  absl::Cleanup remove_work = [&] {
    for (const std::string& path : {key, csr, ext, cert}) {
      unlink(path.c_str());
    }
  };

  std::string extensions = absl::StrCat(
      "[ext]\n"
      "basicConstraints = critical, ",
      options.ca ? "CA:TRUE" : "CA:FALSE",
      "\n"
      "keyUsage = critical, digitalSignature",
      options.ca ? ", keyCertSign" : "",
      "\n"
      "subjectKeyIdentifier = hash\n"
      "authorityKeyIdentifier = keyid:always\n");
  if (!ekus.empty()) {
    absl::StrAppend(&extensions,
                    "extendedKeyUsage = ", absl::StrJoin(ekus, ", "), "\n");
  }
  if (!alt_names.empty()) {
    absl::StrAppend(&extensions, "subjectAltName = @alt\n\n[alt]\n",
                    absl::StrJoin(alt_names, ""));
  }
  // A leftover from an interrupted call must not stop this one.
  unlink(ext.c_str());
  SIGNET_RETURN_IF_ERROR(WriteNewFile(ext, extensions, 0644));

  SIGNET_RETURN_IF_ERROR(RunOpenssl({"genpkey", "-algorithm", "EC", "-pkeyopt",
                                     "ec_paramgen_curve:P-256", "-pkeyopt",
                                     "ec_param_enc:named_curve", "-out", key})
                             .status());
  SIGNET_RETURN_IF_ERROR(
      RunOpenssl({"req", "-new", "-config", config_path_, "-key", key, "-subj",
                  absl::StrCat("/CN=", SubjValue(cn)), "-out", csr})
          .status());
  SIGNET_RETURN_IF_ERROR(
      RunOpenssl({"ca", "-batch", "-notext", "-config", config_path_, "-days",
                  absl::StrCat(kLeafDays), "-extfile", ext, "-extensions",
                  "ext", "-in", csr, "-out", cert})
          .status());
  SIGNET_ASSIGN_OR_RETURN(
      std::string serial_line,
      RunOpenssl({"x509", "-noout", "-serial", "-in", cert}));
  issued.serial = ValueAfterEquals(serial_line);

  // Test keys, readable by a service under test (see the header).
  if (chmod(key.c_str(), 0644) != 0 || chmod(cert.c_str(), 0644) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod ", key, " / ", cert));
  }
  if (rename(key.c_str(), issued.key_path.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("rename ", key));
  }
  if (rename(cert.c_str(), issued.cert_path.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("rename ", cert));
  }
  SIGNET_ASSIGN_OR_RETURN(std::string cert_pem, ReadFile(issued.cert_path));
  SIGNET_ASSIGN_OR_RETURN(std::string key_pem, ReadFile(issued.key_path));
  issued.cert_pem = std::move(cert_pem);
  issued.key_pem = std::move(key_pem);
  return issued;
}

absl::StatusOr<TestCa::Issued> TestCa::IssueServer(absl::string_view name) {
  CertOptions options;
  options.cn = "localhost";
  options.dns_sans = {"localhost"};
  options.ip_sans = {"127.0.0.1", "::1"};
  options.eku = "serverAuth";
  return Issue(name, options);
}

absl::Status TestCa::Revoke(const Issued& cert) {
  SIGNET_ASSIGN_OR_RETURN(
      std::string out, RunOpenssl({"x509", "-noout", "-issuer_hash", "-serial",
                                   "-in", cert.cert_path}));
  // Output: the issuer hash on one line, then "serial=<hex>".
  std::vector<absl::string_view> lines =
      absl::StrSplit(out, '\n', absl::SkipWhitespace());
  if (lines.size() != 2) {
    return absl::InternalError(
        absl::StrCat("unexpected openssl x509 output: ", out));
  }
  if (absl::StripAsciiWhitespace(lines[0]) != subject_hash_) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert.cert_path, " was not issued by the CA in ", dir_));
  }
  const std::string serial = ValueAfterEquals(lines[1]);

  // `openssl ca -revoke` would add an unknown certificate to the database:
  // look it up first. index.txt: status, expiry, revocation, serial, file,
  // subject, separated by tabs.
  SIGNET_ASSIGN_OR_RETURN(std::string index, ReadFile(Join(dir_, "index.txt")));
  bool found = false;
  for (absl::string_view line :
       absl::StrSplit(index, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, '\t');
    if (fields.size() < 4 || !absl::EqualsIgnoreCase(fields[3], serial)) {
      continue;
    }
    if (fields[0] == "R") {
      return absl::FailedPreconditionError(
          absl::StrCat("certificate ", serial, " (", cert.cert_path,
                       ") is already revoked"));
    }
    found = true;
  }
  if (!found) {
    return absl::InvalidArgumentError(
        absl::StrCat("certificate ", serial, " (", cert.cert_path,
                     ") is not in the database of the CA in ", dir_));
  }
  return RunOpenssl({"ca", "-batch", "-config", config_path_, "-revoke",
                     cert.cert_path})
      .status();
}

absl::Status TestCa::WriteCrl(absl::string_view crl_dir) {
  std::string dir(crl_dir);
  while (dir.size() > 1 && absl::EndsWith(dir, "/")) {
    dir.pop_back();
  }
  if (dir.empty() || HasControlCharacter(dir)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CRL directory must be a non-empty path without control characters, "
        "got '",
        absl::CHexEscape(crl_dir), "'"));
  }
  SIGNET_RETURN_IF_ERROR(MakeDir(dir, 0755, /*may_exist=*/true));
  const std::string crl = Join(dir_, "work/crl.pem");
  absl::Cleanup remove_crl = [&crl] { unlink(crl.c_str()); };
  SIGNET_RETURN_IF_ERROR(RunOpenssl({"ca", "-batch", "-gencrl", "-config",
                                     config_path_, "-out", crl})
                             .status());
  // The directory lookup finds a CRL by the hash of its issuer name, which
  // is the CA's subject hash.
  SIGNET_ASSIGN_OR_RETURN(std::string out,
                          RunOpenssl({"crl", "-noout", "-hash", "-in", crl}));
  if (absl::StripAsciiWhitespace(out) != subject_hash_) {
    return absl::InternalError(
        absl::StrCat("the CRL's issuer hash ", absl::StripAsciiWhitespace(out),
                     " differs from the CA's subject hash ", subject_hash_));
  }
  SIGNET_ASSIGN_OR_RETURN(std::string pem, ReadFile(crl));
  return ReplaceFile(Join(dir, absl::StrCat(subject_hash_, ".r0")), pem, 0644);
}

}  // namespace signet::testing
