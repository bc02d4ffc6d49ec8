// A PKCS#11 attribute template that owns the bytes it points at.
//
// Thread-compatible. Values are copied in, so the template outlives the
// arguments given to it; pointers into it stay valid while it lives
// (std::deque never moves its elements).
#ifndef SIGNET_HSM_ATTRIBUTES_H_
#define SIGNET_HSM_ATTRIBUTES_H_

#include <p11-kit/pkcs11.h>

#include <deque>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace signet::hsm {

class AttributeTemplate {
 public:
  AttributeTemplate& Bool(CK_ATTRIBUTE_TYPE type, bool value) {
    return Bytes(type, absl::string_view(value ? "\x01" : "\x00", 1));
  }
  AttributeTemplate& Ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG value) {
    return Bytes(type, absl::string_view(reinterpret_cast<const char*>(&value),
                                         sizeof(value)));
  }
  AttributeTemplate& Bytes(CK_ATTRIBUTE_TYPE type, absl::string_view value) {
    std::string& stored = storage_.emplace_back(value);
    attrs_.push_back(
        {type, stored.data(), static_cast<CK_ULONG>(stored.size())});
    return *this;
  }
  CK_ATTRIBUTE* data() { return attrs_.data(); }
  CK_ULONG size() const { return static_cast<CK_ULONG>(attrs_.size()); }

 private:
  std::deque<std::string> storage_;
  std::vector<CK_ATTRIBUTE> attrs_;
};

}  // namespace signet::hsm

#endif  // SIGNET_HSM_ATTRIBUTES_H_
