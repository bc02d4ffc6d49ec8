// Token selection by an RFC 7512 PKCS#11 URI ("pkcs11:token=signet"),
// parsed by p11-kit's uri.h (no hand-written URI parser).
//
// Thread-safety: immutable after Parse(); Matches() may be called
// concurrently.
#ifndef SIGNET_HSM_TOKEN_URI_H_
#define SIGNET_HSM_TOKEN_URI_H_

#include <p11-kit/pkcs11.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

extern "C" {
typedef struct p11_kit_uri P11KitUri;
}

namespace signet::hsm {

class TokenUri {
 public:
  // INVALID_ARGUMENT with p11-kit's reason when `uri` is not a PKCS#11 URI,
  // or when it carries attributes p11-kit does not recognize (a typo there
  // would otherwise match every token).
  static absl::StatusOr<TokenUri> Parse(absl::string_view uri);

  // True if the token described by `info` matches every token attribute of
  // the URI (label, manufacturer, model, serial).
  bool Matches(const CK_TOKEN_INFO& info) const;

  const std::string& text() const { return text_; }

 private:
  struct UriDeleter {
    void operator()(P11KitUri* uri) const;
  };
  TokenUri(std::string text, std::shared_ptr<P11KitUri> uri)
      : text_(std::move(text)), uri_(std::move(uri)) {}

  std::string text_;
  std::shared_ptr<P11KitUri> uri_;
};

// "signet" from the blank-padded CK_TOKEN_INFO.label.
std::string TokenLabel(const CK_TOKEN_INFO& info);

}  // namespace signet::hsm

#endif  // SIGNET_HSM_TOKEN_URI_H_
